"""Hooks: synchronous callbacks on what the pools do, for users who instrument in their own way.

``connections.on(kind, callback)`` registers ``callback(event)`` for one kind of
:class:`HookEvent`. Nothing is measured for a kind nobody listens to; the scope
path pays nothing for ``use`` until someone listens to it. A callback that raises
is logged once (at WARNING, with its traceback); it keeps being called, and
never breaks aconn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ("KINDS", "HookEvent", "Hooks")

logger = logging.getLogger("aconn")

#: the kinds of events, and what ``seconds`` / ``reason`` / ``task`` carry for each
KINDS: Final = {
    "connect": "a connection opened; seconds: how long the connect took",
    "close": "a connection closed; reason: the CloseReason value; seconds: its age",
    "wait": "a task waited for a connection; seconds: how long; reason: 'timeout' if it gave up",
    "use": "a scope gave a connection back; seconds: how long it held it",
    "leak": "a connection held past LEAK_TIMEOUT; task: the holder's name; seconds: held so far",
}


@dataclass(frozen=True, slots=True)
class HookEvent:
    """What happened, to which alias."""

    kind: str
    alias: str
    seconds: float | None = None
    reason: str | None = None
    task: str | None = None


Callback = Callable[[HookEvent], object]


class Hooks:
    """The callbacks of one handler, by kind, shared by its pools."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callback]] = {}
        self._failed: set[int] = set()
        #: called when the first ``use`` callback is added (the handler then wraps each pool's release)
        self.on_first_use: Callable[[], None] | None = None

    def add(self, kind: str, callback: Callback) -> Callable[[], None]:
        """Register ``callback`` for ``kind``; returns a function that removes it.

        :raises ValueError: for an unknown kind.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown hook {kind!r}; the kinds are: {', '.join(KINDS)}")
        first_use = kind == "use" and not self.callbacks.get("use")
        self.callbacks.setdefault(kind, []).append(callback)
        if first_use and self.on_first_use is not None:
            self.on_first_use()

        def remove() -> None:
            listeners = self.callbacks.get(kind, [])
            if callback in listeners:
                listeners.remove(callback)

        return remove

    def wants(self, kind: str) -> bool:
        return bool(self.callbacks.get(kind))

    def emit(self, event: HookEvent) -> None:
        for callback in self.callbacks.get(event.kind, ()):
            try:
                callback(event)
            except Exception:
                if id(callback) not in self._failed:
                    self._failed.add(id(callback))
                    logger.warning(
                        "aconn: a %r hook (%r) raised (logged once; aconn goes on)",
                        event.kind,
                        callback,
                        exc_info=True,
                    )
