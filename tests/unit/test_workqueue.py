from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

import pytest

from edgeadapt.operator.workqueue import ReportedError, WorkQueue


def test_keys_are_deduplicated_serialised_and_rerun_when_added_while_active() -> None:
    async def scenario() -> tuple[list[Hashable], int]:
        seen: list[Hashable] = []
        running: set[Hashable] = set()
        overlap = 0
        gate = asyncio.Event()

        async def handler(key: Hashable) -> None:
            nonlocal overlap
            if key in running:
                overlap += 1
            running.add(key)
            seen.append(key)
            await gate.wait()
            running.discard(key)

        queue = WorkQueue(handler, workers=4)
        queue.start()
        for _ in range(5):
            queue.add("a")  # deduplicated while pending
        queue.add("b")
        await asyncio.sleep(0.05)
        queue.add("a")  # while "a" runs: runs once more afterwards
        queue.add("a")
        gate.set()
        await asyncio.sleep(0.1)
        await queue.stop()
        return seen, overlap

    seen, overlap = asyncio.run(scenario())
    assert sorted(seen, key=str) == ["a", "a", "b"]
    assert overlap == 0


def test_failures_are_retried_with_backoff() -> None:
    async def scenario() -> int:
        calls = 0

        async def handler(key: Hashable) -> None:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise RuntimeError("transient")

        queue = WorkQueue(handler, workers=1, max_backoff=0.05)
        queue.start()
        queue.add("k")
        await asyncio.sleep(0.5)
        await queue.stop()
        return calls

    assert asyncio.run(scenario()) == 3


def test_reported_errors_are_retried_and_logged_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> int:
        calls = 0

        async def handler(key: Hashable) -> None:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ReportedError("child refused; the status says so")

        queue = WorkQueue(handler, workers=1, max_backoff=0.05)
        queue.start()
        queue.add("k")
        await asyncio.sleep(0.5)
        await queue.stop()
        return calls

    with caplog.at_level(logging.WARNING, logger="edgeadapt.operator.workqueue"):
        assert asyncio.run(scenario()) == 3
    failures = [r for r in caplog.records if "child refused" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in failures)
