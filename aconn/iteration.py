"""``connections.each(source)``: one scope per job pulled from a source."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Generic, TypeVar

from .scope import Scope

__all__ = ("Jobs",)

T = TypeVar("T")


class Jobs(Generic[T]):
    """Each item of a source handled in a scope of its own. Built by ``connections.each()``.

    ::

        async with connections.each(source) as jobs:
            async for job in jobs:
                await handle(job)        # inside the job's own scope

    The next item is pulled *between* scopes: a source that waits for work
    (an ``asyncio.Queue``, a message broker) never holds a connection while
    it waits, which would go stale past the server's ``wait_timeout`` without
    any scope boundary to notice. A job claimed from the database itself
    (``SELECT ... FOR UPDATE SKIP LOCKED``) belongs in the body, or in a
    ``@connections.scoped`` function, so that the claim and the work share
    the job's transaction (see ``examples/worker.py``). Leaving the
    ``async with`` by ``break``, an exception or a cancellation exits the
    current job's scope with that exception: its connection is given back,
    an open transaction rolled back, a connection cut mid-query closed.
    """

    def __init__(self, new_scope: Callable[[], Scope], source: AsyncIterable[T] | Iterable[T]) -> None:
        self._new_scope = new_scope
        self._source = source
        self._iterator: AsyncIterator[T] | None = None
        self._scope: Scope | None = None
        self._done = False

    async def __aenter__(self) -> Jobs[T]:
        if isinstance(self._source, AsyncIterable):
            self._iterator = aiter(self._source)
        else:
            self._iterator = _as_async(self._source)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        await self._end_scope(exc_type, exc, tb)
        close = getattr(self._iterator, "aclose", None)
        if close is not None:
            await close()

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
        if scope is not None:
            await scope.__aexit__(exc_type, exc, tb)


async def _as_async(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item
