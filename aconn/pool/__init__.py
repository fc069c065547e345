"""The pool of one alias, in small homes.

- :mod:`.pool`: :class:`Pool`, the idle stack and the decide steps of acquire and release
- :mod:`.holder`: :class:`Holder`, one connection, and the transitions of its slot
- :mod:`.waiters`: the tasks waiting for a connection, first in first out, one timer
- :mod:`.connect`: connecting within a deadline, a refusal retried with backoff
- :mod:`.counters`: the totals behind :class:`~aconn.PoolStats`
- :mod:`.nodes`: the hosts of a multi-host alias, their state, which one a connection goes to
"""

from __future__ import annotations

from .connect import MAX_BACKOFF
from .holder import CloseReason, Holder, HolderState
from .nodes import CHECK_INTERVAL
from .pool import CLEANUP_TIMEOUT, PING_BYPASS, Pool

__all__ = (
    "CHECK_INTERVAL", "CLEANUP_TIMEOUT", "MAX_BACKOFF", "PING_BYPASS", "CloseReason", "Holder", "HolderState", "Pool"
)  # fmt: skip
