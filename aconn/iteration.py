"""``connections.each(source)``: one scope per job pulled from a source."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar, Union

from .scope import Scope

__all__ = ("Jobs",)

T = TypeVar("T")

logger = logging.getLogger("aconn")

#: what ``each()`` takes
Source = Union[AsyncIterable[T], Iterable[T], "asyncio.Queue[T | None]"]


class Jobs(Generic[T]):
    """Each item of a source handled in a scope of its own. Built by ``connections.each()``.

    ::

        async with connections.each(source) as jobs:
            async for job in jobs:
                await handle(job)        # inside the job's own scope

    The next item is pulled *between* scopes: a source that waits for work
    (an ``asyncio.Queue``, a message broker) never holds a connection while
    it waits, which would go stale past the server's ``wait_timeout`` without
    any scope boundary to notice.

    From an ``asyncio.Queue``, the loop ends when it gets ``None`` (put one per
    worker to stop them) or is cancelled, and ``task_done()`` is called once
    each job's scope has exited, so ``await queue.join()`` waits for the work
    *and* its commit. An exception that ends the loop is logged (with the
    traceback) before it propagates: a worker task nobody awaits still says
    why it stopped. A job claimed from the database itself
    (``SELECT ... FOR UPDATE SKIP LOCKED``) belongs in the body, or in a
    ``@connections.scoped`` function, so that the claim and the work share
    the job's transaction (see ``examples/worker.py``). Leaving the
    ``async with`` by ``break``, an exception or a cancellation exits the
    current job's scope with that exception: its connection is given back,
    an open transaction rolled back, a connection cut mid-query closed.
    """

    def __init__(self, new_scope: Callable[[], Scope], source: Source[T]) -> None:
        self._new_scope = new_scope
        self._source = source
        self._iterator: AsyncIterator[T] | None = None
        self._scope: Scope | None = None
        self._done = False
        self._queue: asyncio.Queue[Any] | None = None
        self._pulled = False  # an item was taken from the queue and task_done() is owed for it

    async def __aenter__(self) -> Jobs[T]:
        source = self._source
        if isinstance(source, asyncio.Queue):
            self._queue = source
            self._iterator = self._from_queue(source)
        elif isinstance(source, AsyncIterable):
            self._iterator = aiter(source)
        elif isinstance(source, Iterable):
            self._iterator = _as_async(source)
        else:
            error = TypeError(
                f"connections.each() takes an asyncio.Queue, an async iterable or an iterable, "
                f"not {type(source).__name__}"
            )
            _log_end(error)
            raise error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        try:
            await self._end_scope(exc_type, exc, tb)
            close = getattr(self._iterator, "aclose", None)
            if close is not None:
                await close()
        except Exception as cleanup_exc:
            _log_end(cleanup_exc)
            raise
        if isinstance(exc, Exception):
            _log_end(exc)

    def __aiter__(self) -> Jobs[T]:
        return self

    async def __anext__(self) -> T:
        if self._iterator is None:
            raise RuntimeError("use `async with connections.each(source) as jobs:` before iterating")
        await self._end_scope(None, None, None)  # the previous job is finished
        if self._done:
            raise StopAsyncIteration
        try:
            item = await anext(self._iterator)
        except StopAsyncIteration:
            self._done = True
            raise
        scope = self._new_scope()
        await scope.__aenter__()
        self._scope = scope
        return item

    async def _end_scope(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, self._scope = self._scope, None
        try:
            if scope is not None:
                await scope.__aexit__(exc_type, exc, tb)
        finally:
            if self._pulled:
                self._pulled = False
                assert self._queue is not None
                self._queue.task_done()  # after the scope's exit: the job's commit is done too

    async def _from_queue(self, queue: asyncio.Queue[Any]) -> AsyncIterator[T]:
        while True:
            item = await queue.get()
            self._pulled = True
            if item is None:
                return  # the stop sign; its task_done() comes with the loop's end
            yield item


def _log_end(exc: BaseException) -> None:
    logger.error("aconn: a worker loop over connections.each() ends with %s: %s", type(exc).__name__, exc, exc_info=exc)


async def _as_async(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item
