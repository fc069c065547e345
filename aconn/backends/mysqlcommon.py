"""What the two MySQL / MariaDB drivers share: the protocol, the server's limits, TLS, KILL.

:class:`MySQLProtocolBackend` holds everything that is the same whichever driver speaks the
wire protocol: the options aconn owns, the Django form of ``OPTIONS["ssl"]``, the session
setup and the limits query, ``COM_RESET_CONNECTION``, the server-status flags, ``KILL`` of
a session a cancelled caller left running, and what each error code means. A driver module
(:mod:`.mysql` for aiomysql, :mod:`.asyncmy`) fills in the few hooks that read its
private attributes: the transport, the flags that say the stream is gone, the handshake.
"""

from __future__ import annotations

import contextlib
import math
import os
import ssl
import struct
from collections.abc import Awaitable, Callable, Collection, Mapping
from time import monotonic
from types import ModuleType
from typing import Any, ClassVar, Final

from pymysql.constants import CLIENT, CR, ER, SERVER_STATUS

from ..errors import ConfigError
from ..settings import Address, Settings
from .base import (
    Backend,
    ErrorKind,
    NodeState,
    ServerLimits,
    check_options,
    close_socket_of,
    poll_liveness,
    polled_dead,
)
from .nesting import CountsBlocks, forget_blocks

__all__ = ("MySQLProtocolBackend", "cleartext_refused", "tls_not_offered")

# keys aconn sets from the top-level settings; OPTIONS may not override them
_OWN_KEYS = {
    "host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD",
    "passwd": "PASSWORD", "db": "NAME", "database": "NAME",
    "autocommit": "AUTOCOMMIT", "connect_timeout": "CONNECT_TIMEOUT",
}  # fmt: skip
_ISOLATION_LEVELS = frozenset({"read uncommitted", "read committed", "repeatable read", "serializable"})

#: MySQL 8's "disconnected by the server because of inactivity" (not in PyMySQL's ER)
_CLIENT_INTERACTION_TIMEOUT = 4031
#: MariaDB's "Connection was killed": the reply of a session a KILL CONNECTION ended mid-command
#: (not in PyMySQL's ER)
_CONNECTION_KILLED = 1927
#: the server's last words to a session it ends: killed, or the server shutting down
_SESSION_ENDED_CODES = frozenset({_CONNECTION_KILLED, ER.SERVER_SHUTDOWN})
# error codes that mean the session is gone or out of step: the client's own, and the server's
# last words (asyncmy uses PyMySQL's codes)
_DISCONNECT_CODES = frozenset({
    CR.CR_CONN_HOST_ERROR, CR.CR_SERVER_GONE_ERROR, CR.CR_SERVER_LOST, CR.CR_COMMANDS_OUT_OF_SYNC,
    CR.CR_SHARED_MEMORY_CONNECT_ABANDONED_ERROR, CR.CR_SERVER_LOST_EXTENDED, _CLIENT_INTERACTION_TIMEOUT,
    *_SESSION_ENDED_CODES,
})  # fmt: skip
#: a new session lost in its handshake or set-up: worth another try within the acquire deadline
_LOST_WHILE_CONNECTING = frozenset({CR.CR_SERVER_LOST, *_SESSION_ENDED_CODES})
# server refused a new session for now: retry inside the acquire deadline
# (max_connections, and max_user_connections of the account, in its two spellings)
#: a Galera node's state (SHOW STATUS works on a node that refuses statements)
_WSREP_STATUS_SQL: Final = (
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state', "
    "'wsrep_local_state_comment', 'wsrep_local_index', 'wsrep_cluster_size', 'wsrep_cluster_status')"
)
#: wsrep_local_state 4: Synced (2 is Donor/Desynced, 1 Joining, 3 Joined)
_GALERA_SYNCED: Final = "4"
#: "WSREP has not yet prepared node for application use" (ER_UNKNOWN_COM_ERROR): a Galera node
#: out of the primary component, or not synced
_NODE_NOT_READY: Final = 1047
#: a transaction that may succeed when run again: deadlock or certification conflict, lock wait timeout
_CONFLICT_CODES: Final = frozenset({ER.LOCK_DEADLOCK, ER.LOCK_WAIT_TIMEOUT})
_RETRY_CODES = frozenset({ER.CON_COUNT_ERROR, ER.TOO_MANY_USER_CONNECTIONS, ER.USER_LIMIT_REACHED})
# no privilege to read the replica status
_NO_PRIVILEGE_CODES = frozenset({ER.SPECIFIC_ACCESS_DENIED_ERROR, ER.DBACCESS_DENIED_ERROR, ER.ACCESS_DENIED_ERROR})
# the server status flags of the protocol's OK packet
IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
#: the client capability flag of a server that offers TLS
CLIENT_SSL = CLIENT.SSL
# one round trip per new connection; the statement-time variable differs between the two servers
_LIMITS_SQL = (
    "SELECT @@SESSION.wait_timeout, @@GLOBAL.max_connections, @@SESSION.max_user_connections, "
    "@@SESSION.interactive_timeout, {statement_time}, CONNECTION_ID()"
)
_MARIADB_STATEMENT_TIME = "@@SESSION.max_statement_time"  # seconds
_MYSQL_STATEMENT_TIME = "@@SESSION.max_execution_time / 1000"  # milliseconds
#: the Django / mysqlclient form of OPTIONS["ssl"]
_TLS_KEYS = frozenset({"ca", "cert", "key", "check_hostname"})
#: the server's answer to a KILL of a session that has already ended
_UNKNOWN_THREAD = ER.NO_SUCH_THREAD
#: the server's answer to a KILL of another user's session: the id was given out again (a
#: restart the uptime could not tell), so the stopped session, which was ours, is gone
_ANOTHER_USERS = ER.KILL_DENIED_ERROR
_SESSION_ALIVE_SQL = "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s"
#: seconds since the server started (MariaDB and MySQL, no privilege needed)
_UPTIME_SQL = "SHOW GLOBAL STATUS LIKE 'Uptime'"
#: "The server is running with the --read-only option": a demoted primary
_OPTION_PREVENTS_STATEMENT = ER.OPTION_PREVENTS_STATEMENT
#: the protocol command that resets a session in place (MySQL 5.7.3+, MariaDB 10.2.4+)
COM_RESET_CONNECTION = 0x1F
#: COM_QUIT as a whole packet: length 1, sequence 0, the command
QUIT_PACKET = struct.pack("<iB", 1, 0x01)


def tls_not_offered(errors: ModuleType, host: str, port: int) -> Exception:
    """The error for OPTIONS["ssl"] set against a server whose greeting does not offer TLS."""
    return errors.OperationalError(  # type: ignore[no-any-return]
        CR.CR_SSL_CONNECTION_ERROR,
        f"TLS was requested (OPTIONS['ssl']) but the server at {host}:{port} does not offer it; no credential was sent",
    )


def cleartext_refused(errors: ModuleType, host: str, port: int) -> Exception:
    """The error for a server asking for the password in clear text on a connection without TLS."""
    return errors.OperationalError(  # type: ignore[no-any-return]
        2059,
        f"the server at {host}:{port} asked for the password in clear text "
        "(mysql_clear_password) on a connection without TLS; refused, no credential was sent. "
        "Set OPTIONS['ssl'] to connect with TLS",
    )


def _tls_context(alias: str, value: Any) -> ssl.SSLContext:
    """OPTIONS["ssl"] as an SSLContext: one given as-is, or built from the Django form."""
    if isinstance(value, ssl.SSLContext):
        return value
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            alias,
            "OPTIONS.ssl",
            f"must be an ssl.SSLContext or a dict such as {{'ca': '/path/to/ca.pem'}} with keys "
            f"{sorted(_TLS_KEYS)} (Django's MySQL form); got {type(value).__name__} {_shown(value)}",
        )
    for key in value:
        if key not in _TLS_KEYS:
            raise ConfigError(alias, f"OPTIONS.ssl.{key}", f"unknown TLS option; use {sorted(_TLS_KEYS)}")
    for key in ("ca", "cert", "key"):
        if value.get(key) is not None and not isinstance(value[key], str | os.PathLike):
            raise ConfigError(alias, f"OPTIONS.ssl.{key}", "must be a file path")
    check_hostname = value.get("check_hostname", True)
    if not isinstance(check_hostname, bool):
        raise ConfigError(alias, "OPTIONS.ssl.check_hostname", f"must be True or False, got {check_hostname!r}")
    if value.get("key") is not None and value.get("cert") is None:
        raise ConfigError(alias, "OPTIONS.ssl.key", "a client key needs its certificate in 'cert'")
    try:
        context = ssl.create_default_context(cafile=value.get("ca"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(alias, "OPTIONS.ssl.ca", f"cannot load the CA certificate: {exc}") from None
    context.check_hostname = check_hostname
    if value.get("cert") is not None:
        try:
            context.load_cert_chain(value["cert"], value.get("key"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(alias, "OPTIONS.ssl.cert", f"cannot load the client certificate: {exc}") from None
    return context


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kill_step(errors: ModuleType, session_id: int, connected_at: float | None) -> Callable[[Any], Awaitable[bool]]:
    """One step of stopping ``session_id``: ``KILL CONNECTION`` it (once it went out, not
    again), then say whether the server has dropped it.

    A session id names a session of one run of the server: after a restart the ids start over,
    and the stopped session's id may name another session (ours, or another client's of the
    same user). So each session the step runs on first reads the server's ``Uptime``: a server
    started after the stopped session connected (``connected_at``, monotonic) holds none of the
    sessions it had, and there is nothing left to stop. ``Uptime`` counts whole seconds, so a
    restart within about a second of the connect goes unseen; a ``KILL`` refused because the id
    names another user's session (1095) says the same, and ends the stop.
    """
    killed = False
    checked: Any = None  # the session the server's start was last read on

    async def step(conn: Any) -> bool:
        nonlocal killed, checked
        async with conn.cursor() as cur:
            if conn is not checked and connected_at is not None:
                elapsed = monotonic() - connected_at  # taken before the server reads its uptime
                await cur.execute(_UPTIME_SQL)
                row = await cur.fetchone()
                if row is not None and _started_since(float(row[1]), elapsed):
                    return True
                checked = conn
            if not killed:
                try:
                    await cur.execute("KILL CONNECTION %s", (session_id,))
                except errors.OperationalError as exc:
                    code = exc.args[0] if exc.args else None
                    if code == _ANOTHER_USERS:
                        return True
                    if code != _UNKNOWN_THREAD:
                        raise
                killed = True
            return not await cur.execute(_SESSION_ALIVE_SQL, (session_id,))

    return step


def _started_since(uptime: float, elapsed: float) -> bool:
    """True if a server up for ``uptime`` seconds (whole seconds: up to 1 s more) surely started
    after a session of it connected ``elapsed`` seconds ago; 0.1% allowed for clock drift."""
    return uptime + 1 + 0.001 * elapsed < elapsed


def _skip_tls_shutdown(transport: Any) -> None:
    """Close a TLS session's socket now instead of waiting (up to 30 s) for the server's close_notify.

    After COM_QUIT (or on an abort) nothing more is said on it; waiting would keep the socket
    open past the end of a short-lived event loop.
    """
    if transport.get_extra_info("ssl_object") is not None:
        with contextlib.suppress(RuntimeError):  # its loop already closed
            transport.abort()


class CheckedConnection:
    """Mixin for a driver's connection class: aconn's three attributes, and the authentication
    steps checked before any credential leaves (TLS asked for but not offered; the cleartext
    password plugin outside TLS). A driver fills in two hooks: :meth:`aconn_stream_open` and
    :meth:`aconn_auth_plugin`, and names its exception module in ``aconn_errors``.
    """

    #: the driver's exception module (PyMySQL's ``err``, ``asyncmy.errors``)
    aconn_errors: ClassVar[ModuleType]
    #: the id ``CONNECTION_ID()`` reported at connect, when it matches the handshake's (else None)
    aconn_session_id: int | None = None
    #: when the handshake completed (monotonic): the server's session began before
    aconn_connected_at: float | None = None
    #: the driver dropped the connection itself while talking to the server (a cancelled or
    #: failed read, a read timeout, a stream out of step): a statement may still run there
    aconn_dropped = False
    #: set by the backend before it closes the connection on purpose
    aconn_closing = False

    # what the driver's connection has (the mixin comes first in the bases)
    _host: str
    _port: int
    _ssl_context: Any
    _unix_socket: Any
    _secure: bool
    server_capabilities: int

    def aconn_stream_open(self) -> bool:
        """The driver still holds its stream (hook)."""
        raise NotImplementedError

    def aconn_auth_plugin(self) -> str | None:
        """The authentication plugin the server's greeting (or the client) names (hook)."""
        raise NotImplementedError

    async def aconn_statement(self, sql: str) -> None:
        await self.query(sql)  # type: ignore[attr-defined]

    def aconn_drop_begin(self) -> bool:
        """The transaction ends: True if its ``BEGIN`` was held back, to go with its first statement,
        and none went (aiomysql's, ``backends/mysql.py``); this driver sends every ``BEGIN`` at once."""
        return False

    def close(self) -> None:
        if self.aconn_stream_open() and not self.aconn_closing:
            self.aconn_dropped = True  # the driver closes from inside a failed or cancelled command
        super().close()  # type: ignore[misc]

    async def _request_authentication(self) -> Any:
        if self._ssl_context and not self.server_capabilities & CLIENT_SSL:
            raise tls_not_offered(self.aconn_errors, self._host, self._port)
        if self.aconn_auth_plugin() == "mysql_clear_password" and not (self._ssl_context or self._unix_socket):
            raise cleartext_refused(self.aconn_errors, self._host, self._port)  # asked for in the greeting
        return await super()._request_authentication()  # type: ignore[misc]

    async def _process_auth(self, plugin_name: bytes, auth_packet: Any) -> Any:
        if plugin_name == b"mysql_clear_password" and not self._secure:
            # an auth switch to the cleartext plugin, outside TLS
            raise cleartext_refused(self.aconn_errors, self._host, self._port)
        return await super()._process_auth(plugin_name, auth_packet)  # type: ignore[misc]


def reusable_unless(flagged_dead: Callable[[Any], bool]) -> Callable[[Any, Any], bool]:
    """``MySQLProtocolBackend.reusable`` for a driver whose stream flags ``flagged_dead`` reads:
    autocommit on, no transaction open, the stream whole. Built once per driver class, so that
    the release path calls a plain function (no static method looked up on the instance)."""

    def reusable(self: Any, conn: Any) -> bool:
        status = conn.server_status
        return bool(status & AUTOCOMMIT) and not status & IN_TRANS and not flagged_dead(conn)

    return reusable


class MySQLProtocolBackend(CountsBlocks, Backend):
    """The MySQL / MariaDB backend, less the driver: a subclass names its driver and reads its internals.

    The connection class a subclass builds carries three attributes of aconn's own:
    ``aconn_session_id`` (the id a KILL would name, None when unverified), ``aconn_dropped``
    (the driver closed the stream itself mid-command: a statement may still run on the
    server) and ``aconn_closing`` (the backend closes it on purpose).
    """

    vendor: ClassVar[str] = "mysql"
    #: the driver's exception module (PyMySQL's ``err``, ``asyncmy.errors``): same names, same codes
    errors: ClassVar[Any]
    #: the driver's name, for messages
    driver: ClassVar[str]
    #: the keyword arguments the driver's connection accepts
    driver_keys: ClassVar[Collection[str]]
    #: the keyword under which the driver takes the database name
    database_key: ClassVar[str] = "db"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        alias = settings.alias
        options = dict(settings.options)
        check_options(
            alias,
            options,
            _OWN_KEYS,
            {*self.driver_keys, "isolation_level"},
            f"not an {self.driver}.connect() option",
        )
        isolation = options.pop("isolation_level", None)
        self._setup_sql: str | None = None
        if isolation is not None:
            if not isinstance(isolation, str) or isolation.lower() not in _ISOLATION_LEVELS:
                raise ConfigError(alias, "OPTIONS.isolation_level", f"must be one of {sorted(_ISOLATION_LEVELS)}")
            self._setup_sql = f"SET SESSION TRANSACTION ISOLATION LEVEL {isolation.upper()}"
        if "ssl" in options:
            options["ssl"] = _tls_context(alias, options["ssl"])
        self._tls_required = "ssl" in options
        self._kwargs: dict[str, Any] = {
            # a multi-host alias: the first; each connect names its node
            "host": settings.addresses[0][0],
            "port": settings.addresses[0][1],
            "user": settings.user or None,
            "password": settings.password,
            self.database_key: settings.name or None,
            "autocommit": settings.autocommit,
            # None: the driver's own bound is an asyncio.wait_for, which on Python 3.11 can
            # swallow the caller's cancellation and leave the rest of the handshake unbounded;
            # the pool bounds the whole connect with one asyncio.timeout instead.
            "connect_timeout": None,
            **options,
        }

    # -- the driver's hooks -------------------------------------------------------------

    def _new_connection(self, address: Address | None) -> Any:
        """The driver's connection object, built from ``self._kwargs`` (aimed at ``address``), not yet connected."""
        raise NotImplementedError

    async def _handshake(self, conn: Any) -> None:
        """Take ``conn`` through TCP, TLS and authentication (the caller closes it if this fails)."""
        raise NotImplementedError

    @staticmethod
    def transport_of(conn: Any) -> Any:
        """The connection's asyncio transport, or None once the driver has let go of it."""
        raise NotImplementedError

    @staticmethod
    def _detach(conn: Any) -> None:
        """Drop the driver's references to its transport (the socket is closed by the caller)."""
        raise NotImplementedError

    @staticmethod
    def flagged_dead(conn: Any) -> bool:
        """True if the driver or the event loop already knows the session is unusable (no system call).

        Runs at every hand-out and release, so it reads attributes instead of calling methods.
        """
        raise NotImplementedError

    async def _quit(self, conn: Any) -> None:
        """COM_QUIT and close: the server logs no aborted connection."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------

    async def _open(self, address: Address | None = None) -> Any:
        """A connection through the handshake (TLS and authentication checked), no session setup.

        The connection object is built first, so that its socket is closed whatever happens
        (a driver's own ``connect()`` leaves it open when cancelled mid-handshake).
        """
        conn = self._new_connection(address)
        try:
            await self._handshake(conn)
            transport = self.transport_of(conn)
            if self._tls_required and (transport is None or transport.get_extra_info("ssl_object") is None):
                raise self.errors.OperationalError(
                    CR.CR_SSL_CONNECTION_ERROR,
                    f"TLS was requested (OPTIONS['ssl']) but the session to {self.settings.target} is not encrypted",
                )
        except BaseException:
            conn.aconn_closing = True
            conn.close()
            raise
        return conn

    async def _set_up(self, cur: Any, mariadb: bool) -> None:
        """The session's setup, at connect and again after a reset: isolation level, statement limit."""
        if self._setup_sql:
            await cur.execute(self._setup_sql)
        timeout = self.settings.statement_timeout
        if timeout is not None:
            if mariadb:
                await cur.execute("SET SESSION max_statement_time = %s", (timeout,))
            else:  # MySQL: milliseconds, and for SELECT statements only
                await cur.execute("SET SESSION max_execution_time = %s", (max(1, round(timeout * 1000)),))

    async def reset(self, conn: Any) -> None:
        """COM_RESET_CONNECTION: session variables, temporary tables, user locks, prepared statements
        cleared without a reconnect; then the session set up again as at connect."""
        await conn._execute_command(COM_RESET_CONNECTION, "")
        await conn._read_ok_packet()
        await conn.autocommit(self.settings.autocommit)  # the reset restores the server's default
        async with conn.cursor() as cur:
            await self._set_up(cur, "mariadb" in conn.server_version.lower())

    async def connect(self, address: Address | None = None) -> tuple[Any, ServerLimits]:
        conn = await self._open(address)
        conn.aconn_connected_at = monotonic()
        try:
            mariadb = "mariadb" in conn.server_version.lower()
            statement_time = _MARIADB_STATEMENT_TIME if mariadb else _MYSQL_STATEMENT_TIME
            async with conn.cursor() as cur:
                await self._set_up(cur, mariadb)
                await cur.execute(_LIMITS_SQL.format(statement_time=statement_time))
                wait_timeout, max_conns, max_user, interactive, statement, session_id = await cur.fetchone()
        except BaseException:
            conn.aconn_closing = True
            conn.close()
            raise
        verified = self._verify_session_id(conn, int(session_id))
        limits = ServerLimits(
            idle_timeout=float(wait_timeout) if wait_timeout else None,
            max_connections=int(max_conns),
            max_user_connections=int(max_user) or None,
            version=conn.server_version.removeprefix("5.5.5-"),  # MariaDB's handshake prefix
            interactive_timeout=float(interactive) if interactive else None,
            max_statement_time=float(statement) if statement else None,
            session_id_verified=verified,
        )
        return conn, limits

    @staticmethod
    def _verify_session_id(conn: Any, session_id: int) -> bool:
        """Keep the id a KILL would name only if the handshake and ``CONNECTION_ID()`` agree.

        Behind a proxy (ProxySQL, MaxScale, RDS Proxy) the handshake's id is the proxy's and
        ``CONNECTION_ID()`` a backend session's that other clients may share: a KILL of
        either could stop the wrong statement, so none is sent (the CANCEL_ON_SERVER rule
        says so once, and ``python -m aconn check`` reports it).
        """
        verified: bool = session_id == conn.thread_id()
        conn.aconn_session_id = session_id if verified else None
        return verified

    async def close(self, conn: Any) -> None:
        transport = self.transport_of(conn)
        if transport is None:
            return
        conn.aconn_closing = True
        if self.is_dead(conn):
            conn.close()
        else:
            await self._quit(conn)
        _skip_tls_shutdown(transport)

    def abort(self, conn: Any) -> None:
        transport = self.transport_of(conn)
        conn.aconn_closing = True
        conn.close()
        if transport is not None:
            _skip_tls_shutdown(transport)

    def forget(self, conn: Any) -> None:
        # transport.close() would schedule its work on the connection's own loop
        transport = self.transport_of(conn)
        if transport is None:
            return
        conn.aconn_closing = True
        self._detach(conn)
        close_socket_of(transport)

    def _fileno(self, conn: Any) -> int | None:
        sock = self.transport_of(conn).get_extra_info("socket")
        return None if sock is None else int(sock.fileno())

    def is_dead(self, conn: Any, *, peek: bool = True) -> bool:
        if self.flagged_dead(conn) or self.transport_of(conn).is_closing():
            return True
        return peek and polled_dead(self._fileno(conn))

    def liveness(self, conn: Any) -> Callable[[], bool]:
        fd = self._fileno(conn)
        return super().liveness(conn) if fd is None else poll_liveness(conn, fd, self.flagged_dead)

    def reusable(self, conn: Any) -> bool:
        # each driver class sets it with reusable_unless(its module's flags function): a call of a
        # static method found through the instance costs ~200 instructions more, at every release
        raise NotImplementedError

    async def ping(self, conn: Any) -> None:
        await conn.ping(reconnect=False)

    def in_transaction(self, conn: Any) -> bool:
        status = conn.server_status
        return bool(status & IN_TRANS) or not status & AUTOCOMMIT

    async def rollback(self, conn: Any) -> None:
        forget_blocks(conn)  # the driver's rollback() is then its own, a real ROLLBACK
        if not conn.aconn_drop_begin():  # else nothing went since the BEGIN held back: nothing to roll back
            await conn.rollback()
        if self.settings.autocommit and not conn.server_status & AUTOCOMMIT:
            await conn.autocommit(True)  # the scope switched it off: restore the session

    def defer_begin(self, conn: Any) -> bool:
        """Open a transaction block (as :meth:`begin_block` with no savepoint) whose ``BEGIN`` goes
        out with the next statement, in one write when that is a ``SELECT``, if the driver's
        connection can (aiomysql's): True then, else nothing is done. Its :meth:`end_block` token
        is None; a block that ends before any statement ends with nothing sent
        (``conn.aconn_drop_begin()``)."""
        defer = getattr(conn, "aconn_defer_begin", None)
        if defer is None:
            return False
        defer()
        conn.aconn_blocks += 1  # as CountsBlocks.begin_block
        return True

    async def execute(self, conn: Any, sql: str) -> None:
        # the connection's own query(), no cursor: BEGIN, SAVEPOINT and COMMIT return no rows, and
        # a cursor's set-up and close cost a quarter of such a statement's client-side instructions
        await conn.aconn_statement(sql)

    async def replica_lag(self, conn: Any) -> float | None:
        """``Seconds_Behind_Master`` (MariaDB; ``_Source`` on MySQL 8): needs REPLICATION CLIENT
        (MySQL) or SLAVE MONITOR (MariaDB 10.5+)."""
        async with conn.cursor() as cur:
            for statement in ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS"):
                try:
                    await cur.execute(statement)
                    break
                except self.errors.ProgrammingError:
                    continue  # the other spelling
                except self.errors.OperationalError as exc:
                    if exc.args and exc.args[0] in _NO_PRIVILEGE_CODES:
                        return None
                    raise
            row = await cur.fetchone()
            if row is None:
                return 0.0  # not a replica
            status = dict(zip([d[0] for d in cur.description], row, strict=True))
        behind = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
        return math.inf if behind is None else float(behind)

    @staticmethod
    def dropped_mid_command(conn: Any) -> bool:
        """The stream was cut under a command, not by the backend: a statement may still run on the
        server (it notices a closed client only when it writes). By default: the driver closed the
        connection itself (``aconn_dropped``), as aiomysql does on a cancelled or failed read."""
        return bool(conn.aconn_dropped)

    def left_running(self, conn: Any) -> bool:
        # behind ProxySQL or RDS Proxy a KILL id names no session of ours: POOLER turns it off
        return self.dropped_mid_command(conn) and conn.aconn_session_id is not None and self.settings.pooler is None

    async def cancel_on_server(self, conn: Any, via: Any = None, address: Address | None = None) -> None:
        """``KILL CONNECTION`` the session from another one, then wait until the server drops it.

        KILL CONNECTION, not KILL QUERY: the connection is discarded anyway, and ending the
        session at once rolls back its transaction and releases its locks. KILL returns
        before the killed thread ends, so the processlist is read until it is gone.
        """
        step = _kill_step(self.errors, conn.aconn_session_id, conn.aconn_connected_at)
        await self._on_another_session(via, step, address)

    async def _open_side(self, address: Address | None) -> Any:
        return await self._open(address)

    async def node_state(self, conn: Any, cluster: str) -> NodeState:
        """A Galera node's state from ``SHOW GLOBAL STATUS`` (allowed while the node refuses
        statements); with ``detect``, a server whose ``wsrep_on`` is off is a plain server."""
        async with conn.cursor() as cur:
            if cluster == "detect":
                await cur.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
                row = await cur.fetchone()
                if row is None or str(row[1]).upper() != "ON":
                    return NodeState(None, ready=True, writable=True, summary="a single server (wsrep_on is OFF)")
            await cur.execute(_WSREP_STATUS_SQL)
            status = {str(name).lower(): str(value) for name, value in await cur.fetchall()}
        ready = status.get("wsrep_ready", "").upper() == "ON"
        state = status.get("wsrep_local_state", "")
        primary = status.get("wsrep_cluster_status", "") == "Primary"
        synced = ready and primary and state == _GALERA_SYNCED
        size = int(status["wsrep_cluster_size"]) if status.get("wsrep_cluster_size", "").isdigit() else None
        index = int(status["wsrep_local_index"]) if status.get("wsrep_local_index", "").isdigit() else None
        comment = status.get("wsrep_local_state_comment") or f"state {state or '?'}"
        if synced:
            summary = f"{comment}, {size} node(s), index {index}"
        else:
            summary = (
                f"{comment}, {status.get('wsrep_cluster_status') or 'no cluster'}, "
                f"wsrep_ready={status.get('wsrep_ready') or '?'}"
            )
        return NodeState("galera", ready=synced, writable=synced, index=index, size=size, summary=summary)

    def is_conflict(self, exc: BaseException) -> bool:
        # 1213: a deadlock, or a Galera certification conflict (the transaction was rolled back);
        # 1205: a lock wait timeout (aconn rolls the whole transaction back before a retry)
        return isinstance(exc, self.errors.MySQLError) and bool(exc.args) and exc.args[0] in _CONFLICT_CODES

    def classify(self, exc: BaseException, *, connecting: bool = False) -> ErrorKind:
        errors = self.errors
        if isinstance(exc, errors.MySQLError) and exc.args and isinstance(exc.args[0], int):
            code = exc.args[0]
            if code in _RETRY_CODES or (connecting and code in _LOST_WHILE_CONNECTING):
                return ErrorKind.RETRYABLE
            if code in _DISCONNECT_CODES:
                return ErrorKind.DISCONNECT
            if code == _OPTION_PREVENTS_STATEMENT and "read-only" in str(exc.args[-1]).lower():
                return ErrorKind.READ_ONLY  # --read-only: the primary was demoted
            if code == _NODE_NOT_READY:
                return ErrorKind.NODE_NOT_READY
        if isinstance(exc, errors.InterfaceError | errors.InternalError | OSError | EOFError):
            return ErrorKind.DISCONNECT
        if isinstance(exc, RuntimeError) and "another coroutine" in str(exc):
            return ErrorKind.DISCONNECT  # concurrent use: the stream is out of step
        return ErrorKind.OTHER
