"""A loopback TCP proxy that cuts and stalls the connections it carries, at random and seeded.

The chaos benchmark puts it between the edge agents and the trainer, so the agents meet the
network faults a cellular or Wi-Fi uplink has: a connection reset in the middle of a message, or
one that goes silent for seconds while both ends believe it is open. It forwards bytes and never
looks at them, so TLS passes through untouched and the trainer's certificate (issued for
127.0.0.1) still matches the address the agents dial.

While chaos is on, every ``mean_interval`` seconds on average (exponentially distributed) it picks
one open connection and either closes both sides at once (an RST, as a dropped link looks) or
pauses forwarding in both directions for a time drawn from ``stall_range``; bytes that arrive
meanwhile wait in the kernel's buffers, so TCP's flow control pushes back on both peers. The
choices come from one ``random.Random(seed)``. The proxy runs its own asyncio loop on a thread;
every public method may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 5.0


@dataclass
class _Connection:
    id: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    flowing: asyncio.Event = field(default_factory=asyncio.Event)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class ChaosProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream_port>; cuts and stalls while chaos is on."""

    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int = 0,
        mean_interval: float = 4.0,
        stall_range: tuple[float, float] = (1.0, 8.0),
        cut_fraction: float = 0.5,
    ) -> None:
        self.upstream_port = upstream_port
        self.mean_interval = mean_interval
        self.stall_range = stall_range
        self.cut_fraction = cut_fraction
        self.rng = random.Random(seed)
        self.port = 0
        self.connections_accepted = 0
        self.upstream_refused = 0  # the trainer was down: the client's connection is closed
        self.cuts = 0
        self.stalls = 0
        self.stall_seconds = 0.0
        self._chaos = False
        self._conns: dict[int, _Connection] = {}
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._chaos_task: asyncio.Task[None] | None = None

    # -- from any thread ------------------------------------------------------------------
    def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self.port

    def set_chaos(self, on: bool) -> None:
        """Start or stop cutting and stalling; stopping also resumes every stalled connection."""
        self._loop.call_soon_threadsafe(self._set_chaos, on)

    def open_connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        """Stop listening, reset every connection, stop the loop. Safe to call twice."""
        if not self._thread.is_alive():  # never started, or closed already
            if not self._loop.is_closed():
                self._loop.close()
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the loop ----------------------------------------------------------------------
    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._chaos_task = asyncio.create_task(self._chaos_loop())

    async def _close(self) -> None:
        self._chaos = False
        if self._chaos_task is not None:
            self._chaos_task.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            conn.abort()
        self._conns.clear()

    def _set_chaos(self, on: bool) -> None:
        self._chaos = on
        if not on:
            for conn in self._conns.values():
                conn.flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream_port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            self.upstream_refused += 1
            writer.transport.abort()
            return
        conn = _Connection(next(self._ids), writer, up_writer)
        conn.flowing.set()
        self._conns[conn.id] = conn
        try:
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer, conn)),
                asyncio.create_task(self._pump(up_reader, writer, conn)),
            ]
            # A connection ends for both peers when either side ends it.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pumps:
                task.cancel()
        finally:
            self._conns.pop(conn.id, None)
            conn.abort()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(CHUNK):
                await conn.flowing.wait()
                dst.write(data)
                await dst.drain()

    async def _chaos_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(1.0 / self.mean_interval))
            if not self._chaos or not self._conns:
                continue
            conn = self._conns[self.rng.choice(sorted(self._conns))]
            if self.rng.random() < self.cut_fraction:
                self.cuts += 1
                log.debug("cutting connection %d", conn.id)
                conn.abort()
            elif conn.flowing.is_set():
                seconds = self.rng.uniform(*self.stall_range)
                self.stalls += 1
                self.stall_seconds += seconds
                log.debug("stalling connection %d for %.1f s", conn.id, seconds)
                conn.flowing.clear()
                self._loop.call_later(seconds, conn.flowing.set)
