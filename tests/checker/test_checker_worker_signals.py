"""The checker's forked workers take signals as processes of their own: run from a program
whose asyncio loop handles SIGTERM (as `harness test` does, to heal faults), a worker the
pool terminates dies, and its signal never reaches the parent's loop as the parent's own."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time

from checker.api import _own_signals


def _terminated_worker(own: bool) -> None:
    if own:
        _own_signals()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(3)  # reached only by a worker that survived its SIGTERM


def _run(own: bool) -> tuple[int | None, bool]:
    """The worker's exit code, and whether the parent's loop was cancelled."""

    async def main() -> int | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            worker = multiprocessing.get_context("fork").Process(
                target=_terminated_worker, args=(own,)
            )
            worker.start()
            worker.join(10)
            await asyncio.sleep(0.3)  # a signal relayed by the worker would cancel us here
            return worker.exitcode
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main()), False
    except asyncio.CancelledError:
        return None, True


def test_a_worker_dies_of_sigterm_and_the_parent_loop_is_left_alone() -> None:
    assert _run(own=True) == (-signal.SIGTERM, False)


def test_without_its_own_handlers_a_worker_survives_and_relays_the_signal() -> None:
    # What the pool's workers did before: the case the test above guards against.
    exitcode, cancelled = _run(own=False)
    assert exitcode == 0 or cancelled
