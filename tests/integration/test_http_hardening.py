"""The HTTP server against a hostile client: bad input is a 400 or 404 on SQLite and PostgreSQL alike (never a
500, nor a 503 that blames the store), no version banner, bounded heads and bodies, half-open connections
closed, and 200 simultaneous clients all answered.

Each case here was reproduced against the old ``ThreadingHTTPServer`` (listen backlog 5, no timeouts): a huge
record id overflowed PostgreSQL's BIGINT (503), times out of range raised OverflowError (500), a 60,000
character filter came back as "the store does not answer", a NUL reached PostgreSQL, which refuses it.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.exc import DataError, OperationalError

from daemon.http import (
    MAX_POSITION,
    BadRequestError,
    HttpLimits,
    ReviewServer,
    StoreAuditReader,
    parse_filters,
    parse_time,
    record_key,
)
from events.audit import AuditRecord, AuditTrail, VerifyReport
from events.errors import StoreUnavailableError
from events.sql_store import SqlEventStore

from .test_review_page import TOKEN, decision, decisions, fetch, migrated_store, serve

pytestmark = pytest.mark.integration

# (path, status): every one once answered 500 or 503 by the old server, or reached the database.
BAD_INPUT = [
    ("/audit/99999999999999999999999999", 404),  # past BIGINT: PostgreSQL's "integer out of range"
    (f"/audit/{MAX_POSITION + 1}", 404),
    (f"/audit/{MAX_POSITION}", 404),  # the largest position there can be, not there
    ("/audit/%C2%B2", 404),  # "²".isdigit(), but int("²") fails
    ("/audit/%D9%A3", 404),  # an Arabic-Indic 3: a digit, not a position
    ("/audit/" + "e" * 300, 404),  # longer than any event id
    ("/audit/%00", 400),
    ("/audit/model.promoted%00x", 400),
    ("/audit/%1B%5B2J", 400),  # an escape sequence
    ("/nowhere%00", 400),
    ("/audit?since=0001-01-01T00:00:00%2B01:00", 400),  # before year 1 in UTC: OverflowError
    ("/audit?until=9999-12-31T23:59:59-01:00", 400),  # after 9999 in UTC
    ("/audit?since=0000-06-01", 400),
    ("/audit?until=10000-01-01", 400),
    ("/audit?model=" + "x" * 60_000, 400),
    ("/audit?model=" + "x" * 513, 400),
    ("/audit?actor=" + "a" * 5_000, 400),
    ("/audit?model=alignd-policy%00", 400),
    ("/audit?actor=%00", 400),
    ("/audit?type=%00", 400),
    ("/audit?since=2026-11-01%00", 400),
    ("/audit?actor=bob%0D%0ASet-Cookie:x=1", 400),
    ("/audit?nonsense%00=1", 400),
    ("/audit?after=99999999999999999999", 400),  # past BIGINT
    ("/audit?after=" + "9" * 5000, 400),  # past Python's int() digit limit, and the length limit
    ("/audit?limit=100000000000000000000", 400),
]


@pytest.fixture
def served(store: SqlEventStore) -> Iterator[ReviewServer]:
    """A server on the parametrised store (SQLite, PostgreSQL) with the seven decisions chained."""
    store.append(decisions())
    assert AuditTrail(store).catch_up() == 7
    server = serve(store, token=TOKEN)
    yield server
    server.stop()


@pytest.mark.slow
def test_bad_input_is_400_or_404_on_sqlite_and_postgresql(served: ReviewServer) -> None:
    for path, expected in BAD_INPUT:
        status, headers, page = fetch(served, path)
        assert status == expected, (path[:80], status, page[:300])
        assert "the store does not answer" not in page and "internal error" not in page
        assert "Content-Security-Policy" in headers
    # The page says which filter is wrong.
    assert "since" in fetch(served, "/audit?since=0001-01-01T00:00:00%2B01:00")[2]
    assert (
        "until &#39;9999-12-31T23:59:59-01:00&#39; is out of range"
        in fetch(served, "/audit?until=9999-12-31T23:59:59-01:00")[2]
    )
    assert "longer than 512 characters" in fetch(served, "/audit?model=" + "x" * 513)[2]
    # Values at the limits are still taken.
    for path in (
        "/audit?model=" + "x" * 512,
        f"/audit?after={MAX_POSITION}",
        "/audit?since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
        "/audit?since=0001-01-01T00:00:00-01:00",
        "/audit/3",
        "/audit/0003",
        "/audit/model.promoted:alignd-policy:3",
    ):
        assert fetch(served, path)[0] == 200, path
    page = fetch(served, "/audit?since=2026-11-01T12:03:00Z&until=9999-12-31T23:59:59Z")[2]
    assert page.count('<tr class="record"') == 5


def test_parse_time_filters_and_record_key() -> None:
    assert parse_time("2026-11-01T12:00:00Z") == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert parse_time("0001-01-01T00:00:00-01:00").year == 1  # 01:00 UTC on the first day: in range
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(BadRequestError, match="since .* is out of range"):
            parse_time(value, "since")
    with pytest.raises(BadRequestError, match="is not an RFC 3339 time"):
        parse_time("x" * 10_000)
    with pytest.raises(BadRequestError, match="control character"):
        parse_filters({"model": "a\x00b"})
    with pytest.raises(BadRequestError, match="longer than 512"):
        parse_filters({"actor": "a" * 513})
    assert parse_filters({"after": str(MAX_POSITION)})["after_position"] == MAX_POSITION
    assert [record_key(k) for k in ("3", "0003", "x:1", str(MAX_POSITION + 1), "²", "e" * 129)] == [
        "3",
        "0003",
        "x:1",
        None,
        None,
        None,
    ]
    with pytest.raises(BadRequestError):
        record_key("a\nb")


# --- 503 only for a store that does not answer -----------------------------------------------------------------


class FakeReader:
    """An AuditReader whose reads fail with a given error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def list(self, **filters: Any) -> Sequence[AuditRecord]:
        raise self.error

    def get(self, position_or_event_id: str) -> AuditRecord | None:
        raise self.error

    def verify(self) -> VerifyReport:
        raise self.error

    def catch_up(self) -> int:
        raise self.error

    def last_position(self) -> int:
        raise self.error


@pytest.mark.parametrize(
    "error, status",
    [
        (StoreUnavailableError("connection refused"), 503),
        (OperationalError("SELECT", {}, Exception("server closed the connection")), 503),
        (DataError("SELECT", {}, Exception("integer out of range (secret internals)")), 500),
        (RuntimeError("secret internals"), 500),
    ],
)
def test_503_is_only_for_a_store_that_does_not_answer(
    sqlite_store: SqlEventStore, error: Exception, status: int
) -> None:
    server = serve(sqlite_store, reader=FakeReader(error))
    try:
        for path in ("/audit", "/audit/1"):
            got, headers, page = fetch(server, path)
            assert got == status and "secret" not in page and "Traceback" not in page
            assert "Content-Security-Policy" in headers
        assert fetch(server, "/healthz")[0] == 200
    finally:
        server.stop()


@pytest.fixture
def sqlite_store(tmp_path: Any) -> Iterator[SqlEventStore]:
    store = migrated_store(tmp_path / "events.db")
    store.append(decisions())
    yield store
    store.dispose()


# --- the server's limits ----------------------------------------------------------------------------------------


def raw_exchange(server: ReviewServer, data: bytes, wait: float = 10.0) -> tuple[bytes, float, bool]:
    """Send bytes on a fresh connection and read until the server closes it: (what came back, seconds it took,
    whether the server closed the connection within ``wait``)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=wait)
    started, answer = time.monotonic(), b""
    try:
        if data:
            sock.sendall(data)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer, time.monotonic() - started, True
            answer += chunk
    except TimeoutError:
        return answer, time.monotonic() - started, False
    except ConnectionResetError:
        return answer, time.monotonic() - started, True
    finally:
        sock.close()


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def test_no_server_banner(sqlite_store: SqlEventStore) -> None:
    server = serve(sqlite_store)
    try:
        answers = [
            raw_exchange(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())[0]
            for method, path in [("GET", "/healthz"), ("GET", "/nowhere"), ("TRACE", "/"), ("GET", "/audit?since=x")]
        ]
        answers.append(raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")[0])  # uvicorn's own 400
        for answer in answers:
            head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            assert head.startswith("HTTP/1.1 "), head
            assert "server:" not in head.lower(), head
            assert "python" not in head.lower() and "uvicorn" not in head.lower(), head
    finally:
        server.stop()


def test_a_body_over_the_limit_is_413_and_the_connection_closed(sqlite_store: SqlEventStore) -> None:
    server = serve(sqlite_store, token=TOKEN)
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    try:
        declared = f"POST /audit/verify HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 65537\r\n\r\n".encode()
        answer, _, closed = raw_exchange(server, declared + b"x" * 1000)  # refused without reading the body
        assert answer.startswith(b"HTTP/1.1 413 ") and closed
        chunked = f"POST /audit/verify HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n".encode()
        chunk = b"%x\r\n%s\r\n" % (16384, b"y" * 16384)
        answer, _, closed = raw_exchange(server, chunked + chunk * 5 + b"0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413 ") and closed
        # At the limit, the body is read and the request served.
        status, _, body = fetch_with_body(server, b"z" * 65536)
        assert status == 200 and '"ok": true' in body
        # A body that does not come within the header timeout: 408.
        slow = serve(sqlite_store, token=TOKEN, limits=HttpLimits(header_timeout=0.5))
        try:
            partial = f"POST /audit/verify HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\nabc".encode()
            answer, seconds, closed = raw_exchange(slow, partial)
            assert answer.startswith(b"HTTP/1.1 408 ") and closed and seconds < 5
        finally:
            slow.stop()
    finally:
        server.stop()


def fetch_with_body(server: ReviewServer, body: bytes) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/audit/verify", body=body, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8")
    finally:
        conn.close()


def test_a_head_over_the_limit_is_refused_however_it_arrives(sqlite_store: SqlEventStore) -> None:
    server = serve(sqlite_store, limits=HttpLimits(max_header_bytes=4096))
    try:
        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"f" * 8000 + b"\r\n\r\n"
        answer, _, closed = raw_exchange(server, big)  # in one piece: measured by the application
        assert answer.startswith(b"HTTP/1.1 400 ") and closed
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:  # in pieces: h11 stops buffering past the limit
            sock.sendall(big[:3000])
            time.sleep(0.2)
            sock.sendall(big[3000:6000])
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 400 ")
        finally:
            sock.close()
        assert fetch(server, "/healthz")[0] == 200
    finally:
        server.stop()


def test_half_open_and_slowloris_connections_are_closed(sqlite_store: SqlEventStore) -> None:
    server = serve(sqlite_store, limits=HttpLimits(header_timeout=0.5, keep_alive_timeout=30))
    try:
        results: dict[str, tuple[bytes, float, bool]] = {}

        def probe(name: str, data: bytes) -> None:
            results[name] = raw_exchange(server, data)

        cases = {
            "silent": b"",  # opens and never sends a byte
            "half a head": b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
            "a request line only": b"GET /healthz HTTP/1.1\r\n",
        }
        threads = [threading.Thread(target=probe, args=item) for item in cases.items()]
        for thread in threads:
            thread.start()
        assert fetch(server, "/healthz")[0] == 200  # served meanwhile
        for thread in threads:
            thread.join(timeout=30)
        for name, (answer, seconds, closed) in results.items():
            assert closed and answer == b"" and 0.3 < seconds < 5, (name, seconds)
        # After a complete request on a keep-alive connection, a new head that never ends: closed too, long
        # before the keep-alive timeout (30 s).
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.8)  # idle between requests is the keep-alive timeout's business, not this one's
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            started = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            for _ in range(3):  # a byte now and then does not extend the deadline
                time.sleep(0.1)
                sock.sendall(b"X")
            assert sock.recv(65536) == b"" and time.monotonic() - started < 5
        finally:
            sock.close()
        started = time.monotonic()
        server.stop()  # a connection left open does not hold stop() up
        assert time.monotonic() - started < 5
    finally:
        server.stop()


def test_200_simultaneous_clients_on_healthz_all_succeed(sqlite_store: SqlEventStore) -> None:
    server = serve(sqlite_store)
    clients = 200
    barrier = threading.Barrier(clients)
    statuses: list[int | str] = []

    def client() -> None:
        barrier.wait(timeout=60)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            conn.request("GET", "/healthz")
            statuses.append(conn.getresponse().status)
            conn.close()
        except OSError as exc:
            statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert statuses == [200] * clients, {s: statuses.count(s) for s in set(statuses)}
    finally:
        server.stop()


def test_an_ipv6_host(sqlite_store: SqlEventStore) -> None:
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    server = ReviewServer(sqlite_store, host="::1", port=0)
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    try:
        assert server.url == f"http://[::1]:{server.port}"
        conn = http.client.HTTPConnection("::1", server.port, timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.stop()


def test_an_address_in_use_raises_in_start(sqlite_store: SqlEventStore) -> None:
    first = serve(sqlite_store)
    try:
        with pytest.raises(OSError):
            ReviewServer(sqlite_store, host="127.0.0.1", port=first.port).start()
        assert fetch(first, "/healthz")[0] == 200
    finally:
        first.stop()


def test_a_request_whose_client_left_while_it_waited_is_not_served(sqlite_store: SqlEventStore) -> None:
    gate, asked = threading.Event(), []

    class SlowReader(FakeReader):
        def get(self, position_or_event_id: str) -> AuditRecord | None:
            asked.append(position_or_event_id)
            gate.wait(timeout=30)
            return None

    server = serve(sqlite_store, reader=SlowReader(RuntimeError("unused")), limits=HttpLimits(threads=1))
    try:
        first = threading.Thread(target=fetch, args=(server, "/audit/first"))
        first.start()
        deadline = time.monotonic() + 10
        while not asked and time.monotonic() < deadline:
            time.sleep(0.01)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /audit/second HTTP/1.1\r\nHost: x\r\n\r\n")  # waits for the one thread
        time.sleep(0.2)
        sock.close()  # and gives up
        time.sleep(0.2)
        gate.set()
        first.join(timeout=30)
        deadline = time.monotonic() + 10
        while 'route="gone",status="499"' not in fetch(server, "/metrics")[2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert asked == ["first"]  # the second was dropped before it reached the store
        assert 'alignd_http_requests_total{route="gone",status="499"}' in fetch(server, "/metrics")[2]
    finally:
        gate.set()
        server.stop()


def test_pages_share_one_chain_check_for_a_while_and_a_post_checks_afresh(sqlite_store: SqlEventStore) -> None:
    sqlite_store.append(decisions())
    AuditTrail(sqlite_store).catch_up()
    checks: list[float] = []

    class CountingReader(StoreAuditReader):
        def verify(self) -> VerifyReport:
            checks.append(time.monotonic())
            time.sleep(0.2)  # a long chain: pages arriving meanwhile wait for this check, not for one each
            return super().verify()

    server = serve(sqlite_store, token=TOKEN, reader=CountingReader(sqlite_store), limits=HttpLimits(chain_check_s=60))
    try:
        pages = [threading.Thread(target=fetch, args=(server, "/audit")) for _ in range(8)]
        for page in pages:
            page.start()
        for page in pages:
            page.join(timeout=30)
        assert fetch(server, "/audit")[0] == 200 and len(checks) == 1
        status, _, body = fetch(server, "/audit/verify", "POST", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and '"ok": true' in body and len(checks) == 2
    finally:
        server.stop()
    unshared = serve(sqlite_store, reader=CountingReader(sqlite_store), limits=HttpLimits(chain_check_s=0))
    try:
        fetch(unshared, "/audit")
        fetch(unshared, "/audit")
        assert len(checks) == 4
    finally:
        unshared.stop()


def test_probes_asking_together_share_one_readiness_check(sqlite_store: SqlEventStore) -> None:
    server = serve(sqlite_store)
    checks: list[float] = []
    real = server.readiness

    def slow_readiness() -> tuple[bool, str]:
        checks.append(time.monotonic())
        time.sleep(0.3)  # a schema check on a busy PostgreSQL
        return real()

    server.readiness = slow_readiness  # type: ignore[method-assign]
    try:
        answers: list[int] = []
        probes = [threading.Thread(target=lambda: answers.append(fetch(server, "/readyz")[0])) for _ in range(10)]
        for probe in probes:
            probe.start()
        for probe in probes:
            probe.join(timeout=30)
        assert answers == [200] * 10 and len(checks) == 1
        time.sleep(1.1)
        assert fetch(server, "/readyz")[0] == 200 and len(checks) == 2  # asked again once the answer is old
    finally:
        server.stop()


def test_a_page_viewed_again_is_served_as_rendered_until_the_trail_or_a_mark_changes(
    sqlite_store: SqlEventStore,
) -> None:
    sqlite_store.append(decisions())
    AuditTrail(sqlite_store).catch_up()
    listed: list[dict[str, Any]] = []

    class CountingReader(StoreAuditReader):
        def list(self, **filters: Any) -> Sequence[AuditRecord]:
            listed.append(filters)
            return super().list(**filters)

    server = serve(sqlite_store, reader=CountingReader(sqlite_store), limits=HttpLimits(chain_check_s=60))
    try:
        first = fetch(server, "/audit")
        assert first[0] == 200 and fetch(server, "/audit")[2] == first[2] and len(listed) == 1
        assert fetch(server, "/audit?actor=ana")[0] == 200 and len(listed) == 2  # another query, another page
        # A new decision is a new page at once, without waiting for the chain check's window.
        rollback = {"name": "alignd-policy", "version": "2", "previous_version": "3", "actor": "bo", "reason": "rude"}
        sqlite_store.append([decision("model.rolled_back:alignd-policy:3", "model.rolled_back", rollback, 9)])
        AuditTrail(sqlite_store).catch_up()
        status, _, page = fetch(server, "/audit")
        assert status == 200 and len(listed) == 3 and "rude" in page
        assert 'class="badge rolled-back"' in page  # and the version it left is marked on its records
    finally:
        server.stop()
