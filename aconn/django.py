"""aconn in a Django project: the project's own ``DATABASES``, a scope per ASGI request, jobs in scopes.

Importing this module imports Django; aconn itself never does. Four names:

- :func:`connections`: the project's handler, built once from ``settings.DATABASES``
  (Django's keys as they are; aconn's own keys, such as ``MAX_CONNS``, may sit beside them).
- :func:`scope_middleware`: a Django middleware (``"aconn.django.scope_middleware"`` in
  ``MIDDLEWARE``) that runs each request in a scope, in the task that runs the view.
- :func:`asgi_application`: Django's ASGI application with aconn's lifespan (which Django's
  handler does not implement): the handler opened at startup, closed at shutdown.
- :func:`run`: run an async job in a scope, from a management command or a worker.

aconn hands out driver connections for native async SQL; Django's ORM keeps its own
connections. The two never share a connection or a transaction (see ``docs/django.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

from .asgi import ASGIApp, ConnectionsMiddleware
from .errors import AconnError, ConfigError
from .handler import Connections
from .settings import parse_settings

__all__ = ("asgi_application", "connections", "databases_from_django", "run", "scope_middleware", "serving_warnings")

#: where scope_middleware is named in settings.MIDDLEWARE
MIDDLEWARE_PATH = "aconn.django.scope_middleware"

logger = logging.getLogger("aconn")

P = ParamSpec("P")
R = TypeVar("R")

_handler: Connections | None = None


def databases_from_django(
    databases: Mapping[str, Any] | None = None, aliases: Iterable[str] | None = None
) -> dict[str, Any]:
    """The entries of ``DATABASES`` that aconn can serve.

    An alias aconn cannot serve (an Oracle database, Django's dummy engine) is skipped with
    a log line, unless it is named in ``aliases``: then its ``ConfigError`` is raised.

    :param databases: default ``django.conf.settings.DATABASES``.
    :param aliases: serve only these (default: every alias aconn can serve).
    """
    if databases is None:
        from django.conf import settings

        databases = settings.DATABASES
    wanted = list(aliases) if aliases is not None else None
    served: dict[str, Any] = {}
    for alias, entry in databases.items():
        if wanted is not None and alias not in wanted:
            continue
        try:
            parse_settings(alias, entry)
        except ConfigError as exc:
            if wanted is not None or exc.key != "ENGINE":
                raise
            logger.info("aconn: DATABASES[%r] skipped: %s", alias, exc)
            continue
        served[alias] = entry
    missing = [alias for alias in wanted or () if alias not in databases]
    if missing:
        raise ConfigError(missing[0], None, f"not in DATABASES; configured: {', '.join(map(repr, databases))}")
    return served


#: the ScopeError's advice in a Django project served over ASGI
_ASGI_ADVICE = (
    f"add {MIDDLEWARE_PATH!r} to settings.MIDDLEWARE (a scope per request), or wrap the "
    "unit of work in `async with connections.scope():` (aconn.django.run() from sync code)"
)
#: ... and served over WSGI, where the middleware cannot open a scope
WSGI_ADVICE = (
    "Django is serving this request over WSGI (`manage.py runserver` without daphne, gunicorn "
    f"without an ASGI worker), where {MIDDLEWARE_PATH!r} passes requests through: an async view "
    "runs in an event loop of its own per request, with no scope. Serve the project's ASGI "
    "application instead (`uvicorn mysite.asgi:application --reload` in development, or daphne "
    "in INSTALLED_APPS for runserver), or wrap the work in `async with connections.scope():`"
)


def connections() -> Connections:
    """The project's aconn handler, built on first use from ``settings.DATABASES``; one per process."""
    global _handler
    if _handler is None:
        _handler = Connections(databases_from_django())
        _handler.outside_scope_advice = _ASGI_ADVICE
    return _handler


def serving_warnings() -> list[str]:
    """What in the project's settings keeps aconn's scopes from working (for ``check --django``)."""
    from django.conf import settings

    warnings = []
    if MIDDLEWARE_PATH not in settings.MIDDLEWARE:
        warnings.append(f"{MIDDLEWARE_PATH!r} is not in settings.MIDDLEWARE: async views get no scope")
    if "daphne" not in settings.INSTALLED_APPS:
        warnings.append(
            "`manage.py runserver` serves this project over WSGI (daphne is not in INSTALLED_APPS), where "
            "aconn's middleware passes requests through and connection() raises ScopeError; in "
            "development serve the ASGI application (`uvicorn PROJECT.asgi:application --reload`)"
        )
    return warnings


def scope_middleware(get_response: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Django middleware: each request in a scope of its own, entered in the task that runs the view.

    Add ``"aconn.django.scope_middleware"`` to ``MIDDLEWARE``. Django's ASGI handler runs
    the middleware chain and the view in a task of its own, so the scope is entered here,
    not around the ASGI call. Under WSGI (no event loop) it passes requests through, and
    a ``connection()`` call from an async view raises a ``ScopeError`` that says so.
    """
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction

    handler = connections()
    if not iscoroutinefunction(get_response):
        # a synchronous stack (WSGI): no scope can be entered in the task that runs an async
        # view; say so when such a view asks for a connection
        handler.outside_scope_advice = WSGI_ADVICE
        return get_response
    handler.outside_scope_advice = _ASGI_ADVICE

    async def middleware(request: Any) -> Any:
        async with handler.scope():
            return await get_response(request)

    markcoroutinefunction(middleware)
    return middleware


# what Django reads to hand the middleware an async get_response under ASGI
scope_middleware.async_capable = True  # type: ignore[attr-defined]
scope_middleware.sync_capable = True  # type: ignore[attr-defined]


def asgi_application(django_app: ASGIApp | None = None, *, shutdown_timeout: float = 10.0) -> ConnectionsMiddleware:
    """Django's ASGI application with aconn's lifespan: the handler opened at startup, closed at shutdown.

    Use it in the project's ``asgi.py``: ``application = aconn.django.asgi_application()``, with
    ``"aconn.django.scope_middleware"`` in ``MIDDLEWARE`` (checked here). Django's ASGI handler
    refuses lifespan events; aconn answers them itself, so ``uvicorn --lifespan on`` (or ``auto``)
    opens the handler at startup (a wrong password stops the server) and closes it at shutdown,
    once requests in flight are done. With ``--lifespan off`` the handler opens lazily on the first
    request and closes its connections when the server's event loop ends.

    :raises AconnError: when ``scope_middleware`` is missing from ``MIDDLEWARE``.
    """
    from django.conf import settings

    if MIDDLEWARE_PATH not in settings.MIDDLEWARE:
        raise AconnError(
            f"add {MIDDLEWARE_PATH!r} to settings.MIDDLEWARE: Django runs each view in a task of its "
            "own, and the scope must be entered there (first in the list, so every view and middleware "
            "after it can use aconn)"
        )
    if django_app is None:
        from django.core.asgi import get_asgi_application

        django_app = get_asgi_application()
    return ConnectionsMiddleware(django_app, connections(), shutdown_timeout=shutdown_timeout, scopes=False)


def run(job: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run an async job in a scope from synchronous code (a management command, a worker process).

    Opens the handler, runs ``job(*args, **kwargs)`` in a scope, closes the handler: one
    ``asyncio.run()``. Inside, ``connections().connection()`` gives the driver's connection.
    """
    handler = connections()

    async def main() -> R:
        async with handler, handler.scope():
            return await job(*args, **kwargs)

    return asyncio.run(main())
