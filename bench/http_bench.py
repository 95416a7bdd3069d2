"""The HTTP server under many simultaneous clients, and whether another role in the process keeps its pace.

    python -m bench.http_bench                                   # 3 runs: 200 clients, /healthz then /audit
    python -m bench.http_bench --runs 1 --requests 5 --audit-requests 2    # quick smoke
    python -m bench.http_bench --rate 150 --audit-requests 0     # /healthz at a set pace, not flat out

What it does, per run:

1. A fresh SQLite store (WAL) with ``--records`` (200) decision events, chained by ``AuditTrail.catch_up``, and
   a ``ReviewServer`` on it (``daemon.http``, default settings, a free port on 127.0.0.1) in this process.
2. In this process too, another role: a thread appending one small ``interaction.logged`` event per
   transaction to the same store, all run long. Its rate is taken alone (``--idle-seconds`` before the load)
   and during each load; the ratio (under load / alone) says how much the HTTP server takes from it.
3. A client in a child process (so that its own CPU and GIL do not count as the server's): ``--clients``
   (200) asyncio workers, released together, each sending ``--requests`` (20) GETs of ``/healthz``, then
   ``--audit-requests`` (5) of ``/audit`` (the page with its chain check, 100 records), one new connection per
   request (``Connection: close``, as probes and browsers behind proxies do), real sockets. A request fails
   when it does not complete with a 200 within ``--timeout`` (5 s) or the connection is refused or reset.
4. Prints failed requests, p50/p99 latency of the successful ones (connect to last byte), requests/s, the
   append rate ratio and the load average before and after; writes ``bench/results/http.json``.

This is a benchmark, not a test: nothing is asserted on timings.

Figures on the 2-core development machine (shared: load average 2-7 from other work, so the append rates are
noisy), 3 runs each, 200 clients, 5 s timeout. The old server (``http.server.ThreadingHTTPServer``: listen
backlog 5, a thread per connection, no timeouts), measured with this script before the move and again from a
copy of that commit beside the new one:

- /healthz flat out: old 73-290 of 4,000 requests failed per run (timeouts: connections dropped from the
  5-deep accept queue, answered only after SYN retries), p99 2.7-3.1 s, 180-400 req/s; uvicorn 0 failed,
  p99 0.3-0.7 s (queueing: p50 0.2-0.3 s), 620-880 req/s. The append loop kept 0.47-1.06 of its rate under
  the old server, 0.34-0.59 under the new one, which answered 2-4 times as many requests meanwhile.
- /audit flat out (page and chain check, ~33 req/s on this machine either way): both saturated; old 300-800
  failed of 1,000, new 165-850 (FIFO: the requests served wait nearly the 5 s timeout).
- /healthz paced at 150 req/s (``--rate 150 --audit-requests 0``), 2 runs each, alternated: both 0 failed;
  the append loop kept 0.66-0.81 (old) and 0.63-0.66 (new) of its rate alone: the same within this machine's
  noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import code_version

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ========================================================================================= the client (child)


async def _one(host: str, port: int, path: str, timeout: float) -> tuple[bool, float, str]:
    started = time.perf_counter()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            answer = await reader.read()  # to EOF: the server closes after the answer
        status = answer.split(b" ", 2)[1].decode("ascii", "replace") if answer.startswith(b"HTTP/") else "garbled"
        return status == "200", time.perf_counter() - started, status
    except TimeoutError:
        return False, time.perf_counter() - started, "timeout"
    except OSError as exc:
        return False, time.perf_counter() - started, type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _load(
    host: str, port: int, path: str, clients: int, requests: int, timeout: float, rate: float
) -> dict[str, Any]:
    go = asyncio.Event()
    results: list[tuple[bool, float, str]] = []

    async def worker(index: int) -> None:
        await go.wait()
        loop = asyncio.get_running_loop()
        due = loop.time() + index / rate if rate else 0.0  # paced: the clients' starts spread over one interval
        for n in range(requests):
            if rate:
                await asyncio.sleep(max(0.0, due - loop.time()))
                due += clients / rate
            # "{n}" in a path makes every request of the load a different page (no repeat views).
            results.append(await _one(host, port, path.replace("{n}", str(index * requests + n)), timeout))

    tasks = [asyncio.create_task(worker(i)) for i in range(clients)]
    await asyncio.sleep(0.2)  # every worker waiting on the event
    wall0, started = time.time(), time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    seconds, wall1 = time.perf_counter() - started, time.time()
    latencies = sorted(latency for ok, latency, _ in results if ok)
    failures: dict[str, int] = {}
    for ok, _, status in results:
        if not ok:
            failures[status] = failures.get(status, 0) + 1

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else None

    return {
        "path": path,
        "requests": len(results),
        "failed": len(results) - len(latencies),
        "failures": failures,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "requests_per_s": round(len(latencies) / seconds, 1),
        "seconds": round(seconds, 2),
        "wall": [wall0, wall1],
    }


def _client(
    host: str, port: int, plan: list[tuple[str, int]], clients: int, timeout: float, rate: float, out: Any
) -> None:
    """The child process: one load per (path, requests each), in order; each result sent back as it ends."""
    for path, requests in plan:
        out.put(asyncio.run(_load(host, port, path, clients, requests, timeout, rate)))


# ========================================================================================= the server side


def _seed(store: Any, records: int) -> None:
    from events.audit import AuditTrail
    from events.model import Event

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    batch = [
        Event(
            f"model.promoted:bench:{i}",
            "model.promoted",
            t0 + timedelta(minutes=i),
            "alignd.trainers",
            {
                "name": "alignd-policy",
                "version": str(i + 2),
                "previous_version": str(i + 1),
                "alias": "champion",
                "actor": f"user-{i % 7}",
                "reason": f"win rate 0.{50 + i % 40} against v{i + 1}",
            },
        )
        for i in range(records)
    ]
    store.append(batch)
    AuditTrail(store).catch_up()


class Appender(threading.Thread):
    """Another role: one small event appended per transaction, as fast as it goes; each commit's time kept."""

    def __init__(self, store: Any) -> None:
        super().__init__(name="bench-appender", daemon=True)
        self.store, self.stop = store, threading.Event()
        self.times: list[float] = []

    def run(self) -> None:
        from events.model import Event

        while not self.stop.is_set():
            event = Event(
                f"bench:{uuid.uuid4().hex}",
                "interaction.logged",
                datetime.now(UTC),
                "bench",
                {
                    "request_id": uuid.uuid4().hex,
                    "model": {"name": "assistant", "version": "1"},
                    "prompt": "hello",
                    "response": "hi",
                },
            )
            self.store.append([event])
            self.times.append(time.time())

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.times if start <= t < end) / max(end - start, 1e-9)


def one_run(args: argparse.Namespace, index: int) -> dict[str, Any]:
    from events.sql_store import SqlEventStore, create_store_engine
    from migrations.runner import upgrade

    with tempfile.TemporaryDirectory(prefix="alignd-http-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'events.db'}"
        engine = create_store_engine(url)
        upgrade(engine)
        engine.dispose()
        store = SqlEventStore.from_url(url)
        _seed(store, args.records)
        threads = threading.active_count()
        isolation = args.isolation if args.isolation != "both" else ("thread", "process")[(index - 1) % 2]
        server = _server(args, isolation, url, store)
        port = server.start()
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        wanted = (("/healthz", args.requests), ("/audit", args.audit_requests), ("/audit?after={n}", args.distinct))
        plan = [(p, n) for p, n in wanted if n > 0]
        appender = Appender(store)
        load_before = os.getloadavg()
        try:
            appender.start()
            idle0 = time.time()
            time.sleep(args.idle_seconds)
            idle1 = time.time()
            child = ctx.Process(
                target=_client, args=("127.0.0.1", port, plan, args.clients, args.timeout, args.rate, out)
            )
            child.start()
            loads = [out.get(timeout=3600) for _ in plan]
            child.join(timeout=60)
        finally:
            appender.stop.set()
            appender.join(timeout=30)
            server.stop()
            settle(threads)
            store.dispose()
        alone = appender.rate(idle0, idle1)
        for load in loads:
            under = appender.rate(*load.pop("wall"))
            load["append_per_s"] = round(under, 1)
            load["append_ratio"] = round(under / alone, 3) if alone else None
        return {
            "run": index,
            "server": server_kind(),
            "isolation": isolation if isolation == "thread" else f"process (nice {args.nice})",
            "append_per_s_alone": round(alone, 1),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "loads": loads,
        }


def _server(args: argparse.Namespace, isolation: str, url: str, store: Any) -> Any:
    """The review server on a free port: in this process (a thread), or in its own (daemon/http_process.py)."""
    from daemon.http import HttpLimits, ReviewServer

    if isolation == "thread":
        limits = HttpLimits(threads=args.threads) if args.threads else HttpLimits()
        return ReviewServer(store, host="127.0.0.1", port=0, limits=limits)
    from daemon.http_process import HttpProcess
    from daemon.settings import load_settings

    env = {"ALIGND_DATABASE_URL": url, "ALIGND_HTTP_PORT": "0", "ALIGND_HTTP_NICE": str(args.nice)}
    if args.threads:
        env["ALIGND_HTTP_THREADS"] = str(args.threads)
    return HttpProcess(load_settings(env=env))


def settle(threads: int, limit: float = 120.0) -> None:
    """Wait for requests the server still handles after its clients gave up (a thread each on the old server),
    so that they neither touch a deleted store nor count in the next run."""
    deadline = time.monotonic() + limit
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.1)


def server_kind() -> str:
    return "uvicorn" if "uvicorn" in sys.modules else "http.server.ThreadingHTTPServer"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=200, help="simultaneous clients")
    parser.add_argument("--requests", type=int, default=20, help="/healthz requests per client")
    parser.add_argument("--audit-requests", type=int, default=5, help="/audit requests per client")
    parser.add_argument(
        "--distinct",
        type=int,
        default=0,
        help="/audit?after=N requests per client, each a different page (the server keeps repeat views rendered)",
    )
    parser.add_argument("--records", type=int, default=200, help="audit records in the store")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before a request counts as failed")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s of all clients together (0: flat out)")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="append rate measured alone this long")
    parser.add_argument("--threads", type=int, default=None, help="http.threads (default: the setting's default)")
    parser.add_argument(
        "--isolation",
        choices=("thread", "process", "both"),
        default="thread",
        help="the server in this process, in its own (http.isolation), or both in alternation (odd runs: thread)",
    )
    parser.add_argument("--nice", type=int, default=5, help="http.nice for --isolation process")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "http.json", help="JSON results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = []
    for i in range(1, args.runs + 1):
        run = one_run(args, i)
        runs.append(run)
        print(
            f"run {i} ({run['server']}, {run['isolation']}): appends alone {run['append_per_s_alone']}/s, "
            f"load average {run['loadavg_before'][0]} -> {run['loadavg_after'][0]}"
        )
        print(f"  {'path':16} {'requests':>8} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'appends':>8}")
        for load in run["loads"]:
            print(
                f"  {load['path']:16} {load['requests']:8d} {load['failed']:7d} {load['p50_ms'] or '-':>8} "
                f"{load['p99_ms'] or '-':>8} {load['requests_per_s']:8.1f} {load['append_ratio'] or '-':>8}"
                + (f"  failures: {load['failures']}" if load["failures"] else "")
            )
    document = {
        "benchmark": "http",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "code": code_version(),  # bench.harness's: the commit and the modified files
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
