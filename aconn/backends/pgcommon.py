"""What the two PostgreSQL backends (psycopg, asyncpg) share.

The limits read at connect, the SQLSTATEs that mean "retry" or "gone", the
liveness poll, and the stop of a statement a cancelled caller left running:
a cancel request, then a wait until the server has let go of the session.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

from ..settings import Address
from .base import Backend, ErrorKind, NodeState, ServerLimits, poll_liveness, polled_dead

__all__ = ("LIMITS_SQL", "PostgresBackend", "classify_sqlstate", "limits_from_row")

#: one round trip per new connection; durations come from pg_settings in milliseconds
#: (NULL where the server is too old to have the setting)
LIMITS_SQL: Final = (
    "SELECT pg_backend_pid(), current_setting('server_version'), "
    "(SELECT setting::bigint FROM pg_settings WHERE name = 'idle_session_timeout'), "
    "(SELECT setting::bigint FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'), "
    "(SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'), "
    "current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
)
REPLICA_LAG_SQL: Final = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)
#: polled after a cancel request until the session has gone (the client side is closed already)
SESSION_ALIVE_SQL: Final = "SELECT 1 FROM pg_stat_activity WHERE pid = {pid:d}"

#: refused for now: too many clients; starting up; shutting down (a restart) -- retried at connect
_RETRY_STATES: Final = frozenset({"53300", "57P03", "57P01"})
#: the session is gone: admin or crash shutdown, terminated by an administrator, cannot connect now
_GONE_STATES: Final = frozenset({"57P01", "57P02", "57P03"})
#: read_only_sql_transaction: "cannot execute INSERT in a read-only transaction"
_READ_ONLY_STATE: Final = "25006"
#: serialization_failure, deadlock_detected: the transaction may succeed when run again
_CONFLICT_STATES: Final = frozenset({"40001", "40P01"})
#: what libpq's target_session_attrs reads of a server: in recovery (a standby), read-only
NODE_STATE_SQL: Final = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')"
#: what libpq says, with no SQLSTATE, when the server refuses a new session for now
_RETRY_MESSAGES: Final = (
    "too many clients",
    "too many connections",
    "starting up",
    "shutting down",
    "in recovery mode",
    "not yet accepting",
)


def classify_sqlstate(state: str | None, message: str, *, connecting: bool) -> ErrorKind | None:
    """What a SQLSTATE (or, at connect, libpq's message) means; None: up to the driver's classes."""
    if connecting and (state in _RETRY_STATES or (state is None and any(m in message for m in _RETRY_MESSAGES))):
        return ErrorKind.RETRYABLE
    if state is not None and (state.startswith("08") or state in _GONE_STATES):
        return ErrorKind.DISCONNECT
    if state == _READ_ONLY_STATE:
        return ErrorKind.READ_ONLY  # a write on a standby: the primary was demoted (or a READ ONLY transaction)
    return None


def limits_from_row(row: Any, *, pooled: bool = False, key_pid: int | None = None) -> tuple[int, ServerLimits]:
    """The backend pid and :class:`ServerLimits` from a row of :data:`LIMITS_SQL`.

    Behind a pooler the pid is that of whichever server connection ran the query: not this
    client's session (``session_id_verified`` False). ``key_pid`` is the process id of the
    session's cancel key (BackendKeyData): a pooler that was not declared (``POOLER`` unset)
    shows there, as a key of its own that is not the server's pid.
    """
    pid, version, idle_session, idle_in_tx, statement, max_conns, reserved = row
    pooled = pooled or (key_pid is not None and key_pid != int(pid))

    def seconds(ms: Any) -> float | None:
        return float(ms) / 1000 if ms else None

    return int(pid), ServerLimits(
        idle_timeout=seconds(idle_session),
        max_connections=int(max_conns) - int(reserved),  # what non-superusers may open
        version=f"PostgreSQL {version}",
        max_statement_time=seconds(statement),
        idle_in_transaction_timeout=seconds(idle_in_tx),
        session_id_verified=not pooled,
    )


class PostgresBackend(Backend):
    """The part of the two PostgreSQL backends that does not depend on the driver.

    Subclasses provide :meth:`_open` (a connection with no setup), :meth:`_fetch_one`,
    :meth:`_flagged_dead`, :meth:`_socket`, :meth:`_pid` and :meth:`_cancel`.
    """

    # -- driver-specific ------------------------------------------------------------------

    async def _open(self, address: Address | None = None) -> Any:
        raise NotImplementedError

    async def _fetch_one(self, conn: Any, sql: str) -> Any:
        """The first row of ``sql``, or None."""
        raise NotImplementedError

    def _flagged_dead(self, conn: Any) -> bool:
        """The driver knows the connection is closed (no system call)."""
        raise NotImplementedError

    def _socket(self, conn: Any) -> int | None:
        """The connection's file descriptor, if any."""
        raise NotImplementedError

    async def _cancel(self, conn: Any) -> None:
        """Send the driver's cancel request for the statement ``conn`` was running."""
        raise NotImplementedError

    def _pid(self, conn: Any) -> int:
        """The server's process id of the session (known after it is closed)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------

    def pooled(self, conn: Any) -> bool:
        """True if a pooler sits between this connection and the server: declared (``POOLER``),
        or seen at connect (the cancel key's pid is not the server's)."""
        return self.settings.pooler is not None or bool(getattr(conn, "aconn_pooled", False))

    def is_dead(self, conn: Any, *, peek: bool = True) -> bool:
        return self._flagged_dead(conn) or (peek and polled_dead(self._socket(conn)))

    def liveness(self, conn: Any) -> Callable[[], bool]:
        fd = self._socket(conn)
        return super().liveness(conn) if fd is None else poll_liveness(conn, fd, self._flagged_dead)

    def is_conflict(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) in _CONFLICT_STATES

    async def cancel_on_server(self, conn: Any, via: Any = None, address: Address | None = None) -> None:
        """The driver's cancel request, then a wait until the server has dropped the session.

        The client side is closed already, so once the statement stops the server ends the
        session; ``pg_stat_activity`` is read (over ``via``, an idle connection of the pool,
        or a side session outside the cap) until it is gone.
        """
        await self._cancel(conn)
        if self.pooled(conn):
            return  # the pooler forwarded it; its server connection is not this session's to watch
        sql = SESSION_ALIVE_SQL.format(pid=self._pid(conn))

        async def gone(over: Any) -> bool:
            return await self._fetch_one(over, sql) is None

        await self._on_another_session(via, gone, address)

    async def _open_side(self, address: Address | None) -> Any:
        return await self._open(address)

    async def node_state(self, conn: Any, cluster: str) -> NodeState:
        """Primary or standby (``pg_is_in_recovery()``), and whether it takes writes, as libpq's
        ``target_session_attrs`` reads them."""
        row = await self._fetch_one(conn, NODE_STATE_SQL)
        await self._end_read(conn)
        standby, read_only = bool(row[0]), str(row[1]).lower() == "on"
        summary = "standby" if standby else "primary, read-only" if read_only else "primary"
        return NodeState(
            "postgresql", ready=True, writable=not standby and not read_only, standby=standby, summary=summary
        )

    async def _end_read(self, conn: Any) -> None:
        """End the transaction a read opened when AUTOCOMMIT is off (psycopg); nothing by default."""

    async def replica_lag(self, conn: Any) -> float | None:
        """0 on a primary; on a standby, the age of the last transaction replayed, or 0 when it has
        replayed everything it received (an idle primary writes nothing to be behind on)."""
        row = await self._fetch_one(conn, REPLICA_LAG_SQL)
        return float(row[0]) if row and row[0] is not None else math.inf
