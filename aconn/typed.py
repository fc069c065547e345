"""``connections.alias(name, DriverConnection)``: one alias, its driver's connection class declared once.

::

    db = connections.alias("default", asyncpg.Connection)

    async def get_user(user_id: int) -> asyncpg.Record | None:
        conn = await db.connection()            # an asyncpg.Connection to mypy
        return await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)

Every method is the handler's own, for that alias, typed with that class;
``connection()`` and ``acquire()`` check the connection with ``isinstance`` when
they hand it out, so a wrong declaration fails there, not at some later attribute
(``atomic()`` types its connection without a check of its own).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

from .settings import Settings

__all__ = ("Alias",)

T = TypeVar("T")


class _Handler(Protocol):
    """What an :class:`Alias` uses of :class:`aconn.Connections` (which imports this module)."""

    def settings(self, alias: str = "default") -> Settings: ...

    async def connection(
        self, alias: str | None, expected: type[T], read_only: bool = False, hints: Mapping[str, Any] | None = None
    ) -> T: ...

    def acquire(self, alias: str, expected: type[T]) -> contextlib.AbstractAsyncContextManager[T]: ...

    def atomic(
        self, alias: str = "default", *, durable: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def on_commit(self, callback: Any, alias: str = "default", *, robust: bool = False) -> None: ...


class Alias(Generic[T]):
    """One alias of a handler, whose connections are declared to be ``T``. Built by
    :meth:`aconn.Connections.alias`; cheap, immutable, fine as a module-level name."""

    __slots__ = ("_connection_class", "_handler", "name")

    def __init__(self, handler: _Handler, name: str, connection_class: type[T]) -> None:
        handler.settings(name)  # ConfigError (with a "did you mean") for an unknown alias, now
        if not isinstance(connection_class, type):
            raise TypeError(f"aconn alias {name!r}: alias() takes the connection class, not {connection_class!r}")
        self._handler = handler
        #: the alias's name
        self.name = name
        self._connection_class = connection_class

    def __repr__(self) -> str:
        cls = self._connection_class
        return f"<aconn.Alias {self.name!r} of {cls.__module__}.{cls.__qualname__}>"

    async def connection(self, *, read_only: bool = False, hints: Mapping[str, Any] | None = None) -> T:
        """:meth:`Connections.connection` for this alias, typed ``T`` (checked with ``isinstance``)."""
        return await self._handler.connection(self.name, self._connection_class, read_only=read_only, hints=hints)

    def acquire(self) -> contextlib.AbstractAsyncContextManager[T]:
        """:meth:`Connections.acquire` for this alias: ``async with db.acquire() as conn:``."""
        return self._handler.acquire(self.name, self._connection_class)

    def atomic(self, *, durable: bool = False) -> contextlib.AbstractAsyncContextManager[T]:
        """:meth:`Connections.atomic` for this alias: ``async with db.atomic() as conn:``."""
        return cast("contextlib.AbstractAsyncContextManager[T]", self._handler.atomic(self.name, durable=durable))

    async def on_commit(self, callback: Any, *, robust: bool = False) -> None:
        """:meth:`Connections.on_commit` for this alias."""
        await self._handler.on_commit(callback, self.name, robust=robust)
