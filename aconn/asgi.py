"""ASGI integration: a scope per HTTP/WebSocket call, the handler's life tied to the app's lifespan.

Pure ASGI: no ``BaseHTTPMiddleware``, which runs the app in another task and
stops ContextVar changes from propagating, the thing aconn is made of.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .handler import Connections

__all__ = ("ConnectionsMiddleware",)

logger = logging.getLogger("aconn")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _StartupFailed(Exception):
    pass


class ConnectionsMiddleware:
    """Run every ``http`` and ``websocket`` call in ``connections.scope()``; open and close with the lifespan.

    Lifespan startup opens the handler before the wrapped app's own startup
    runs (so it may use the database), and reports ``lifespan.startup.failed``
    with the reason if the database is unreachable, so the server refuses to
    start. Shutdown closes the handler after the app's own shutdown, once
    requests in flight have finished (up to ``shutdown_timeout`` seconds).

    :param app: the ASGI app to wrap.
    :param connections: the handler.
    :param shutdown_timeout: how long shutdown waits for scopes in flight.
    """

    def __init__(self, app: ASGIApp, connections: Connections, shutdown_timeout: float = 10.0) -> None:
        self.app = app
        self.connections = connections
        self.shutdown_timeout = shutdown_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            async with self.connections.scope():
                await self.app(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _open(self) -> str | None:
        """Open the handler; the failure message for ``lifespan.startup.failed``, or None."""
        try:
            await self.connections.open()
        except Exception as exc:
            message = f"aconn could not open the database connections: {type(exc).__name__}: {exc}"
            logger.error("%s", message)
            return message
        return None

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"startup_seen": False, "closed": False}

        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["startup_seen"] = True
                failure = await self._open()
                if failure is not None:
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    raise _StartupFailed
            return message

        async def wrapped_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.connections.aclose(self.shutdown_timeout)
                state["closed"] = True
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        except _StartupFailed:
            return
        except Exception:
            if state["startup_seen"]:
                await self.connections.aclose(self.shutdown_timeout)
                raise
            # the wrapped app does not speak lifespan: handle it ourselves
        if state["startup_seen"]:
            if not state["closed"]:
                await self.connections.aclose(self.shutdown_timeout)
            return
        await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                failure = await self._open()
                if failure is not None:
                    await send({"type": "lifespan.startup.failed", "message": failure})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.connections.aclose(self.shutdown_timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return
