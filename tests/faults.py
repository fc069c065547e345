"""Fault toolkit for the tests: a TCP proxy that can delay, black-hole, reset and refuse.

The proxy runs its own event loop in a thread, so it keeps forwarding (or
stalling) whatever the test's loop is doing. Server-side faults (stop,
restart, freeze, kill sessions) live in :mod:`mariadb`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

from mariadb import free_port


class Proxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target_port>, with faults switched on and off by the test."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        #: seconds added to every chunk, each way
        self.latency = 0.0
        #: hold every byte (both ways) while True: a frozen network path
        self.blackhole = False
        #: accept new connections and reset them at once
        self.refuse = False
        self.accepted = 0
        #: chunks that arrived while black-holed (the test can wait for traffic to be stuck)
        self.held = 0
        #: the first chunk each client sent, per connection (what a protocol opens with)
        self.openings: list[bytes] = []
        self._sockets: set[Any] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="aconn-test-proxy")
        self._server: asyncio.Server | None = None

    def start(self) -> Proxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            _reset(client_w)
            return
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(client_w)
            return
        self._sockets.update((client_w, server_w))
        try:
            await asyncio.gather(self._pump(client_r, server_w, record=True), self._pump(server_r, client_w))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_w, server_w):
                self._sockets.discard(writer)
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    self.openings.append(data)
                    record = False
                if self.blackhole:
                    self.held += 1
                while self.blackhole:
                    await asyncio.sleep(0.01)
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def reset_all(self) -> None:
        """Send a TCP reset on every connection now open through the proxy."""
        done = threading.Event()

        def reset() -> None:
            for writer in list(self._sockets):
                _reset(writer)
            self._sockets.clear()
            # abort() closes the socket in the loop's next iteration: report after that
            self._loop.call_soon(done.set)

        self._loop.call_soon_threadsafe(reset)
        done.wait(10)

    def close(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._sockets):
                _reset(writer)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):  # already closed by the peer
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def make_certificates(directory: Path) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca-key.pem", directory / "ca.pem"
    key, csr, cert = directory / "server-key.pem", directory / "server.csr", directory / "server-cert.pem"
    run = lambda *args: subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=aconn test CA",
        "-keyout", ca_key, "-out", ca_cert)  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-days", "2", "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
        "-extfile", extensions, "-out", cert)  # fmt: skip
    return {"ca": str(ca_cert), "cert": str(cert), "key": str(key)}


class FakeMySQLServer:
    """Speaks the first steps of the MySQL protocol only: a greeting, then (optionally) an auth switch.

    It records every byte a client sends after the greeting, so a test can tell
    whether a credential left the client. Used as ``async with FakeMySQLServer(...) as server``.
    """

    def __init__(self, *, tls: bool = False, plugin: str = "mysql_native_password", switch_to: str | None = None):
        self.tls = tls
        self.plugin = plugin
        self.switch_to = switch_to
        self.received = b""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FakeMySQLServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            writer.write(_packet(0, self._greeting()))
            await writer.drain()
            async with asyncio.timeout(10):
                response = await reader.read(65536)  # b"" when the client hangs up
                self.received += response
                if response and self.switch_to:
                    writer.write(_packet(2, b"\xfe" + self.switch_to.encode() + b"\0" + b"0123456789abcdefghij\0"))
                    await writer.drain()
                    self.received += await reader.read(65536)
        finally:
            writer.transport.abort()

    def _greeting(self) -> bytes:
        from pymysql.constants import CLIENT

        caps = (
            CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
            | CLIENT.CONNECT_WITH_DB | CLIENT.TRANSACTIONS
        )  # fmt: skip
        if self.tls:
            caps |= CLIENT.SSL
        salt = b"abcdefghijklmnopqrst"
        return (
            b"\x0a" + b"5.5.5-10.11.0-MariaDB-fake\0" + struct.pack("<I", 42) + salt[:8] + b"\0"
            + struct.pack("<HBHH", caps & 0xFFFF, 45, 2, caps >> 16) + bytes([21]) + b"\0" * 10
            + salt[8:] + b"\0" + self.plugin.encode() + b"\0"
        )  # fmt: skip


def _packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload
