"""A keyed work queue in the manner of controller-runtime's: a key is queued at most once, is
never worked on by two workers at once, and a key added while it is being worked on runs again
afterwards. Failures are retried with per-key exponential backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


class ReportedError(Exception):
    """Raised by a handler that has reported its failure itself (say, in the object's status):
    the key is retried with the usual backoff, and the log gets one line, not a traceback."""


class WorkQueue:
    def __init__(
        self,
        handler: Callable[[Hashable], Awaitable[None]],
        *,
        workers: int = 8,
        max_backoff: float = 30.0,
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._pending: set[Hashable] = set()  # queued or waiting out a delay
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._pending:
            return
        self._pending.add(key)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, key)
        else:
            self._queue.put_nowait(key)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"reconcile-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def __len__(self) -> int:
        return len(self._pending) + len(self._active)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            self._active.add(key)
            retry: float | None = None
            try:
                await self._handler(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                retry = min(0.5 * 2 ** (n - 1), self._max_backoff)
                if isinstance(e, ReportedError):
                    log.warning(
                        "reconciling %s failed (attempt %d): %s; retrying in %.1fs",
                        key,
                        n,
                        e,
                        retry,
                    )
                else:
                    log.exception(
                        "reconciling %s failed (attempt %d); retrying in %.1fs", key, n, retry
                    )
            finally:
                self._active.discard(key)
                self.processed += 1
            if retry is not None:
                self._dirty.discard(key)
                self.add(key, retry)
            elif key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
