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
            await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_w, server_w):
                self._sockets.discard(writer)
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
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
