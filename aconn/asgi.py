"""ASGI integration: a scope per HTTP/WebSocket call, the handler's life tied to the app's lifespan.

Pure ASGI: no ``BaseHTTPMiddleware``, which runs the app in another task and
stops ContextVar changes from propagating, the thing aconn is made of.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from ._asyncio import run_shielded
from .errors import AcquireTimeout
from .handler import Connections

__all__ = ("ConnectionsMiddleware",)

logger = logging.getLogger("aconn")

#: an ASGI connection scope (not to be confused with :class:`aconn.Scope`, a unit of work)
ASGIScope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, Receive, Send], Awaitable[None]]

#: seconds a client is told to wait before retrying, when no connection was free (503)
RETRY_AFTER = b"1"


async def _send_then(send: Send, message: Message, slow: list[Coroutine[Any, Any, None]]) -> None:
    """Send ``message``, then finish the releases' network work (each shielded), whatever happens."""
    try:
        await send(message)
    finally:
        for work in slow:
            await run_shielded(work)


class ConnectionsMiddleware:
    """Run every ``http`` and ``websocket`` call in ``connections.scope()``; open and close with the lifespan.

    An HTTP request that gets no connection (``AcquireTimeout``, ``PoolOverloaded``
    with ``MAX_WAITING``) before its response started is answered ``503 Service
    Unavailable`` with ``Retry-After``. Add it inside Starlette's error handling
    (``Middleware(ConnectionsMiddleware, ...)``) so that the error reaches it
    before Starlette's own 500 page does.

    With ``ATOMIC_REQUESTS: True`` on an alias, each HTTP request runs in
    ``connections.atomic(alias)``: committed when the app returns, rolled back
    when it raises. The last message of the response body is held back until
    the commit has succeeded, so a client never receives a complete response
    for a transaction that did not commit. WebSocket calls are not wrapped.

    **Connections go back when the response is complete.** Once the last message of an HTTP
    response body has been sent, each connection of the request's scope that no ``atomic()``
    block (``ATOMIC_REQUESTS`` included) and no SQLAlchemy session holds goes back to the pool,
    through the same checks as at the scope's exit, instead of when the whole call ends: what
    runs after that (Starlette's and FastAPI's background tasks) asks for a connection again
    and gets one through the same checks, and session state (``SET``, temporary tables) set
    by the request does not carry over to it. A streaming response keeps its connection until
    its last chunk. ``release="call"`` keeps every connection to the end of the call, as one
    unit of work, for an app whose background work needs the request's own session.

    Lifespan startup opens the handler before the wrapped app's own startup
    runs (so it may use the database). If the database is unreachable it
    reports ``lifespan.startup.failed`` with the reason and raises the error,
    as Starlette's router does, so the server refuses to start and test
    clients raise it. Shutdown closes the handler after the app's own shutdown, once
    requests in flight have finished (up to ``shutdown_timeout`` seconds).

    :param app: the ASGI app to wrap.
    :param connections: the handler.
    :param shutdown_timeout: how long shutdown waits for scopes in flight.
    :param scopes: False to handle only the lifespan, for a framework that runs its views in
        another task than the ASGI call (Django) and enters the scopes there itself.
    :param release: ``"response"`` (the default): a request's connections go back once its
        response is complete; ``"call"``: when the ASGI call ends.
    """

    def __init__(
        self,
        app: ASGIApp,
        connections: Connections,
        shutdown_timeout: float = 10.0,
        *,
        scopes: bool = True,
        release: str = "response",
    ) -> None:
        if release not in ("response", "call"):
            raise ValueError(f"ConnectionsMiddleware(release=...) must be 'response' or 'call', not {release!r}")
        self.app = app
        #: give a request's connections back once its response is complete
        self.release_early = release == "response"
        self.connections = connections
        self.shutdown_timeout = shutdown_timeout
        self.scopes = scopes
        #: the aliases whose HTTP requests each run in a transaction
        self.atomic_aliases = tuple(a for a in connections.aliases if connections.settings(a).atomic_requests)

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.scopes:
            await self._not_http(scope, receive, send)
            return
        # One request in a scope; no connection to be had before the response started: 503.
        # (Here, not in a method of its own: a coroutine less per request.)
        started = False
        own = self.connections.scope()
        release_early = self.release_early  # and only for a scope of its own: see below

        def tracking_send(message: Message) -> Awaitable[None]:
            # a plain function returning the server's own awaitable: no coroutine of ours per message
            nonlocal started
            kind = message["type"]
            if kind == "http.response.start":
                started = True
            elif release_early and kind == "http.response.body" and not message.get("more_body", False):
                # the response is complete: its connections go back before its last bytes are
                # written, so that a waiting request goes on meanwhile; a reset after them
                slow = own.give_back_unused()
                if slow:
                    return _send_then(send, message, slow)
            return send(message)

        try:
            async with own as request:
                # a call inside a scope of the same task (an in-process test client) joins that
                # scope: its connections are the caller's, given back when the caller's scope ends
                release_early = release_early and request is own
                if self.atomic_aliases:
                    await self._in_transactions(scope, receive, tracking_send)
                else:
                    await self.app(scope, receive, tracking_send)
        except AcquireTimeout as exc:
            if started:
                raise
            logger.warning("aconn: answered 503 Service Unavailable: %s", exc)
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", RETRY_AFTER)],
                }
            )
            await send({"type": "http.response.body", "body": b"Service Unavailable: no database connection free\n"})

    async def _not_http(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """The lifespan, a WebSocket session in a scope, anything else passed through."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "websocket" and self.scopes:
            async with self.connections.scope():
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _in_transactions(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        """ATOMIC_REQUESTS: the app in one atomic() block per alias; its final body message sent after COMMIT."""
        held: list[Message] = []

        async def holding_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                held.append(message)  # the response completes once the transaction has committed
                return
            await send(message)

        async with contextlib.AsyncExitStack() as blocks:
            for alias in self.atomic_aliases:
                await blocks.enter_async_context(self.connections.atomic(alias))
            await self.app(scope, receive, holding_send)
        for message in held:
            await send(message)

    async def _open(self, send: Send) -> None:
        """Open the handler; on failure report ``lifespan.startup.failed`` with the reason, then raise.

        As Starlette's router does: the server reports the real error and stops, and test
        clients (Starlette's TestClient, asgi-lifespan) raise it instead of hanging.
        """
        try:
            await self.connections.open()
        except BaseException as exc:
            # the notes say which alias and host:port; the server prints the message (uvicorn
            # logs it, test clients raise the error itself), so aconn does not log it again
            where = "; ".join(getattr(exc, "__notes__", ()))
            message = f"aconn could not open the database connections: {type(exc).__name__}: {exc}"
            await send({"type": "lifespan.startup.failed", "message": f"{message} ({where})" if where else message})
            raise

    async def _lifespan(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        lifespan = _Lifespan()

        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                lifespan.startup_seen = True
                try:
                    await self._open(send)
                except BaseException:
                    lifespan.startup_failed = True
                    raise
            return message

        async def wrapped_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.connections.aclose(self.shutdown_timeout)
                lifespan.closed = True
            await send(message)

        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        except BaseException as exc:
            if lifespan.startup_failed:
                raise  # already reported as lifespan.startup.failed; nothing was left open
            if lifespan.startup_seen:
                await self.connections.aclose(self.shutdown_timeout)
                raise
            if not isinstance(exc, Exception):
                raise
            # the wrapped app does not speak lifespan: handle it ourselves
        if lifespan.startup_seen:
            if not lifespan.closed:
                await self.connections.aclose(self.shutdown_timeout)
            return
        await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._open(send)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.connections.aclose(self.shutdown_timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Lifespan:
    """Where a wrapped app's lifespan got to, as the middleware saw its messages pass."""

    __slots__ = ("closed", "startup_failed", "startup_seen")

    def __init__(self) -> None:
        self.startup_seen = False  # the server sent lifespan.startup, and the app received it
        self.startup_failed = False  # aconn's open() failed there (reported as startup.failed)
        self.closed = False  # the handler was closed as the app reported its shutdown
