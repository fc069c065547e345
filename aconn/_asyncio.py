"""asyncio helpers with a version shim: the current task with no Python frame, cleanup that outlives a cancellation."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ("run_shielded", "task_of")

#: ``task_of(loop)``: the task running on ``loop``, with no Python frame on the scope path
#: (3.11's ``asyncio.current_task`` is Python code around the dict it reads)
task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info >= (3, 12):
    task_of = asyncio.current_task  # implemented in C
else:
    task_of = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]


async def run_shielded(coro: Coroutine[Any, Any, None]) -> None:
    """Run cleanup to its end even if the caller is cancelled meanwhile, then re-raise.

    The cleanup bounds its own network steps in time, so this cannot hang.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()
