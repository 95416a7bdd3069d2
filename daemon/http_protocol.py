"""What uvicorn 0.55 lacks for a server facing hostile clients, as ASGI middleware and a protocol class.

Kept apart from the application (daemon/http.py): these pieces know uvicorn's and h11's internals, which a
uvicorn upgrade may change; the tests in tests/integration/test_http_hardening.py hold them to their promises.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any, ClassVar

import h11  # uvicorn's HTTP/1.1 parser (a dependency of uvicorn): HeadTimeoutH11Protocol reads its states
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("daemon.http")

#: The default deadline for a request head, in seconds (``HttpSettings.header_timeout``).
DEFAULT_HEADER_TIMEOUT = 5.0


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, Starlette's own (405, 500) included."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app, self.headers = app, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k.lower() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request head.

    uvicorn 0.55's ``H11Protocol`` arms a timer only after a response (``timeout_keep_alive``) and cancels it
    at the next byte received: a connection that opens and sends nothing, or part of a request head, or that
    after a response starts a head and never ends it, is never closed (slowloris). Here a connection waiting
    for a head (h11's ``their_state`` is ``IDLE``) is closed ``header_timeout`` seconds after it opened or
    after the first byte of that head; the timer stops once the head is complete.
    """

    header_timeout: ClassVar[float] = DEFAULT_HEADER_TIMEOUT
    _head_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn decides per connection from whether its access logger has handlers, which another library's
        # logging configuration can bring back: one structured line per request is logged by _endpoint.
        self.access_log = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # part of a head: the deadline runs from its first byte
            if self._head_timer is None and not self.transport.is_closing():
                self._arm_head_timer()
        else:
            self._cancel_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a head came in (also from a pipelined buffer)
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.debug(
                "HTTP connection from %s closed: no complete request head in %ss", self.client, self.header_timeout
            )
            self.transport.close()


def head_timeout_protocol(header_timeout: float) -> type[HeadTimeoutH11Protocol]:
    """:class:`HeadTimeoutH11Protocol` with a deadline of its own (uvicorn builds protocols from a class)."""
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"header_timeout": header_timeout})


# --- starting a server: the review page, the guard and serve start theirs alike ----------------------------------

#: Seconds requests in progress get to finish when a server stops.
GRACE_SECONDS = 5


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A socket bound and listening here, not in the server's thread: an address in use raises in the caller, a
    port asked as 0 is known at once, and connections queue from now on."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Accepted sockets inherit it. uvicorn writes a response's head and body in two sends, and with Nagle on
        # the body waited for the client's delayed ACK: 44 ms per request on a keep-alive connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def hardened_server(
    app: Any,
    raw_headers: list[tuple[bytes, bytes]],
    *,
    host: str,
    port: int,
    header_timeout: float,
    backlog: int = 2048,
    keep_alive_timeout: int = 5,
    max_header_bytes: int = 16 * 1024,
    date_header: bool = False,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` with the security headers, the head deadline and nothing it need not say."""
    config = uvicorn.Config(
        SecurityHeaders(app, raw_headers),
        host=host,
        port=port,
        http=head_timeout_protocol(header_timeout),
        ws="none",
        lifespan="off",
        loop="asyncio",
        interface="asgi3",
        log_config=None,  # the daemon configures logging once; uvicorn must not reconfigure it
        access_log=False,  # the servers log one structured line per request, or none, themselves
        server_header=False,  # no "Server: uvicorn": the software and its version are nobody's business
        date_header=date_header,
        proxy_headers=False,  # X-Forwarded-* from anyone is not trusted
        backlog=backlog,
        timeout_keep_alive=keep_alive_timeout,
        h11_max_incomplete_event_size=max_header_bytes,
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    return uvicorn.Server(config)


def serve_in_thread(
    server: uvicorn.Server, sock: socket.socket, name: str, timeout_s: float = 30.0
) -> threading.Thread:
    """Run ``server`` on ``sock`` in a daemon thread (uvicorn installs no signal handlers outside the main thread:
    the supervisor owns them) and wait until it serves.

    Raises:
        ServerStartError: it did not start within ``timeout_s`` (the thread is returned on the error, to be
            joined by the caller's stop).
    """
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServerStartError(thread)
        time.sleep(0.005)
    return thread


class ServerStartError(RuntimeError):
    """A server thread that ended or hung before it served; ``thread`` is it."""

    def __init__(self, thread: threading.Thread) -> None:
        super().__init__("the server did not start (see the log)")
        self.thread = thread
