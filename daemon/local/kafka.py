"""A real single-node Apache Kafka broker (KRaft) for tests and the demo; not used in production.

No Docker engine and no apache.org download is available where alignd is developed, but Maven Central is, and
Kafka publishes its broker there as jars. ``ensure_jars`` resolves them once into a git-ignored cache with the
machine's ``mvn``; ``LocalKafka`` formats a data folder and runs ``java -cp 'lib/*' kafka.Kafka`` on free
loopback ports, one process acting as both broker and controller.

    python -m daemon.local.kafka fetch                 # download the jars only
    python -m daemon.local.kafka run [--data-dir D]    # prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "kafka"

_HERE = Path(__file__).resolve().parent
_POM = _HERE / "kafka_pom.xml"
_LOG4J_CONFIG = _HERE / "kafka_log4j2.yaml"

# Printed by KafkaRaftServer (logged at INFO by kafka_log4j2.yaml) once broker and controller are up.
_READY_LINE = "Kafka Server started"
_BIND_FAILED = "Address already in use"
_LOG_TAIL_LINES = 40

# Brokers started by this process and still running; the atexit hook kills them so that no JVM outlives a
# test session (they run in their own session, so a Ctrl-C on the terminal does not reach them).
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live)
        _live.clear()
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


atexit.register(_kill_leftovers)


# --------------------------------------------------------------------------------------------- jars


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise fetches across processes (e.g. pytest-xdist workers sharing one cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pom_digest() -> str:
    # The marker records which POM filled the lib folder, so editing kafka_pom.xml triggers a new fetch.
    return hashlib.sha256(_POM.read_bytes()).hexdigest()


def _jars_complete(lib: Path, marker: Path, digest: str) -> bool:
    try:
        return lib.is_dir() and marker.read_text().strip() == digest
    except FileNotFoundError:
        return False


def _check_lib(lib: Path) -> None:
    names = {p.name for p in lib.glob("*.jar")}
    required = [f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar", "slf4j-api-1.7.36.jar"]
    missing = [n for n in required if n not in names]
    if missing:
        raise RuntimeError(f"Maven resolved no {', '.join(missing)} into {lib}")
    if not any(n.startswith("log4j-slf4j-impl-") for n in names):
        raise RuntimeError(f"no log4j-slf4j-impl binding in {lib}; the broker would log nothing")
    # Two slf4j APIs on one classpath would make the binding a coin toss.
    if any(n.startswith("slf4j-api-") and n != "slf4j-api-1.7.36.jar" for n in names):
        raise RuntimeError(f"a second slf4j-api is in {lib}: {sorted(n for n in names if 'slf4j' in n)}")


def ensure_jars(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return a folder holding Kafka's broker jars and their dependencies, fetching them on first use.

    The folder is ``cache_dir/<KAFKA_VERSION>/lib``; a ``complete`` marker beside it says a fetch finished, so
    later calls cost nothing. Maven keeps the downloads in ``~/.m2``, so a deleted cache refills quickly.
    """
    cache_dir = Path(cache_dir).resolve()
    home = cache_dir / KAFKA_VERSION
    lib = home / "lib"
    marker = home / "complete"
    digest = _pom_digest()
    if _jars_complete(lib, marker, digest):
        return lib

    with _file_lock(home / ".lock"):
        if _jars_complete(lib, marker, digest):  # another process fetched while we waited
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("`mvn` is not on PATH; it is needed once to fetch Kafka's jars")

        # Maven resolves from a copy of the POM, so its working files land in the cache, not in the package.
        pom = home / "pom.xml"
        shutil.copyfile(_POM, pom)
        # Fill a staging folder and rename it at the end, so an interrupted fetch never looks complete.
        staging = home / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        mvn_log = home / "mvn.log"
        cmd = [
            mvn, "-B", "-ntp", "-f", str(pom),
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        logger.info(
            "fetching Apache Kafka %s jars from Maven Central into %s (first time ~30-60 s)",
            KAFKA_VERSION,
            lib,
        )
        started = time.monotonic()
        with open(mvn_log, "wb") as out:
            rc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home, timeout=1800
            ).returncode
        if rc != 0:
            raise RuntimeError(
                f"mvn exited with {rc} while fetching Kafka's jars; last lines of {mvn_log}:\n"
                + _tail(mvn_log, _LOG_TAIL_LINES)
            )
        _check_lib(staging)
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        marker.write_text(digest + "\n")
        logger.info("fetched %d jars in %.1f s", len(list(lib.glob("*.jar"))), time.monotonic() - started)
    return lib


# ------------------------------------------------------------------------------------------- broker


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            return b"".join(deque(fh, maxlen=lines)).decode("utf-8", "replace")
    except FileNotFoundError:
        return f"({path} does not exist)"


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for distinct free loopback ports.

    The sockets are closed before Kafka binds, so another process can take a port in between; start()
    retries with new ports when that happens.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)  # held open until all are picked, so the kernel hands out distinct ports
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _new_cluster_id() -> str:
    # KRaft's format: 16 random bytes, URL-safe base64 without padding; a leading '-' would read as an option.
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _heap_bytes(size: str) -> int | None:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", size.strip())
    if m is None:
        return None
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("`java` (17 or newer) is not on PATH and JAVA_HOME is unset; Kafka 4 needs a JVM")
    return java


def _server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    props = {
        # One process is broker and controller, the only voter of its own metadata quorum.
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        # The defaults ask for replication factor 3 (unsatisfiable on one node), 50 offsets partitions (slow
        # to create) and a 3 s wait before the first consumer-group rebalance (slow tests).
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a crash (kill()), the controller keeps the dead broker's registration until its session
        # times out, and the restarted broker waits for that (DUPLICATE_BROKER_REGISTRATION): 9 s by
        # default. A shorter session makes crash-restart tests ~5 s faster, still well clear of a GC pause.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
        "num.partitions": "1",
        "message.max.bytes": "2097152",
        # A test broker on a laptop or CI runner: keep the thread count small.
        "num.network.threads": "2",
        "num.io.threads": "2",
    }
    lines = ["# Written by daemon/local/kafka.py; the ports are reused when this data folder is restarted."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


class LocalKafka:
    """One KRaft broker+controller JVM, its data and configuration under ``data_dir``.

    ``data_dir`` holds ``server.properties``, the Kafka log folder ``kafka-logs`` and ``broker.log`` (the
    JVM's stdout and stderr, appended to across restarts). The folder is formatted on the first start only,
    so starting again on the same folder keeps every topic and message and reuses the same ports.
    """

    def __init__(self, data_dir: Path, cache_dir: Path = DEFAULT_CACHE, heap: str = "512m") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = Path(cache_dir)
        self.heap = heap
        self.port: int | None = None
        self.controller_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's output starts in broker.log (it is appended to)
        self._last_check_error = ""  # why the client-side readiness check last failed, for the error message

    # -- paths

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "kafka-logs"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise RuntimeError("the broker has no port yet; call start() first")
        return f"127.0.0.1:{self.port}"

    def _formatted(self) -> bool:
        # StorageTool writes meta.properties into each log dir; its presence means "already formatted".
        if not (self.log_dir / "meta.properties").is_file():
            return False
        if not self.config_path.is_file():
            # Formatting again would wipe the data, so refuse rather than guess.
            raise RuntimeError(f"{self.log_dir} holds Kafka data but {self.config_path} is missing")
        return True

    # -- lifecycle

    def start(self, timeout: float = 120.0) -> LocalKafka:
        if self.is_running():
            raise RuntimeError(f"the broker on {self.bootstrap_servers} is already running")
        lib = ensure_jars(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        try:
            self._start(lib, deadline)
        except BaseException:
            # Whatever went wrong (including Ctrl-C), leave no half-started JVM behind.
            self._reap()
            raise
        logger.info(
            "Kafka %s ready on %s in %.1f s (data in %s)",
            KAFKA_VERSION,
            self.bootstrap_servers,
            time.monotonic() - started,
            self.data_dir,
        )
        return self

    def _start(self, lib: Path, deadline: float) -> None:
        if self._formatted():
            # A restart: same ports as before, so clients holding bootstrap_servers keep working. If another
            # process took a port meanwhile, the bind fails and start() raises; there is nothing to retry.
            props = _read_properties(self.config_path)
            self.port = int(props["advertised.listeners"].rsplit(":", 1)[1])
            self.controller_port = int(props["controller.quorum.voters"].rsplit(":", 1)[1])
            self._launch(lib)
            try:
                self._wait_ready(deadline)
            except _PortTaken:
                raise RuntimeError(
                    f"port {self.port} or {self.controller_port} of {self.data_dir} is taken "
                    f"by another process; last lines of {self.log_path}:\n" + _tail(self.log_path, _LOG_TAIL_LINES)
                ) from None
        else:
            attempts = 3
            for attempt in range(1, attempts + 1):
                self._configure_and_format(lib)
                self._launch(lib)
                try:
                    self._wait_ready(deadline)
                    break
                except _PortTaken:
                    if attempt == attempts:
                        raise RuntimeError(
                            f"could not bind free ports in {attempts} attempts; last lines of "
                            f"{self.log_path}:\n{_tail(self.log_path, _LOG_TAIL_LINES)}"
                        ) from None
                    logger.warning("a picked port was taken before Kafka bound it; retrying with new ports")

    def _configure_and_format(self, lib: Path) -> None:
        # Only ever reached before the folder holds data, so starting the log folder over is harmless; it
        # also clears what a failed earlier attempt may have written.
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.port, self.controller_port = _free_ports(2)
        self.config_path.write_text(_server_properties(self.port, self.controller_port, self.log_dir))
        cmd = [
            _java(), "-Xmx256m", f"-Dlog4j2.configurationFile={_LOG4J_CONFIG}", "-cp", f"{lib}/*",
            "kafka.tools.StorageTool", "format", "-t", _new_cluster_id(), "-c", str(self.config_path),
        ]  # fmt: skip
        # No --standalone: the quorum is declared statically by controller.quorum.voters.
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"formatting {self.log_dir} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        logger.debug("formatted %s: %s", self.log_dir, result.stdout.strip())

    def _launch(self, lib: Path) -> None:
        xmx = self.heap
        # -Xms above -Xmx stops the JVM at once; a small heap setting lowers both.
        heap_bytes = _heap_bytes(xmx)
        xms = xmx if heap_bytes is not None and heap_bytes < (256 << 20) else "256m"
        cmd = [
            _java(), f"-Xms{xms}", f"-Xmx{xmx}", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={_LOG4J_CONFIG}",
            "-cp", f"{lib}/*", "kafka.Kafka", str(self.config_path),
        ]  # fmt: skip
        # Linux's parent-death signal kills the JVM even if this process dies without running atexit (SIGKILL,
        # os._exit from a watchdog). It fires when the *thread* that forked exits, so it is only safe from the
        # main thread, whose end is the end of the process.
        setpriv = shutil.which("setpriv")
        if setpriv is not None and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        # Output goes to a file rather than a pipe, so nothing has to keep reading it to keep the JVM going.
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            # Own session: a Ctrl-C in the terminal goes to pytest, which then stops the broker in order.
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                start_new_session=True,
            )
        with _live_lock:
            _live.add(self._proc)
        logger.info(
            "started Kafka (pid %d) on 127.0.0.1:%s, controller 127.0.0.1:%s",
            self._proc.pid,
            self.port,
            self.controller_port,
        )

    def _new_output(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        seen_ready_line = False
        self._last_check_error = ""
        while True:
            output = self._new_output()
            exited = self._proc.poll() is not None
            if _BIND_FAILED in output:
                self._reap()
                raise _PortTaken()
            if exited:
                rc = self._proc.returncode
                self._forget()
                raise RuntimeError(
                    f"Kafka exited with {rc} during start-up; last lines of {self.log_path}:\n"
                    + _tail(self.log_path, _LOG_TAIL_LINES)
                )
            if not seen_ready_line and _READY_LINE in output:
                seen_ready_line = True
            # The log line says the server started; a client's metadata request says it really answers on the
            # advertised port (and catches a wrong advertised.listeners).
            if seen_ready_line and self._metadata_ok(deadline):
                return
            if time.monotonic() > deadline:
                self._reap()
                what = f"a metadata response ({self._last_check_error})" if seen_ready_line else f"{_READY_LINE!r}"
                raise RuntimeError(
                    f"Kafka did not give {what} in time; last lines of {self.log_path}:\n"
                    + _tail(self.log_path, _LOG_TAIL_LINES)
                )
            time.sleep(0.2)

    def _metadata_ok(self, deadline: float) -> bool:
        from kafka import KafkaConsumer  # imported here so that `fetch` works without kafka-python
        from kafka.errors import KafkaError

        # Bounded waits, so a broker that never answers still fails at the caller's deadline.
        # request_timeout_ms must stay above the consumer's fetch_max_wait_ms (500).
        budget_ms = int(max(2.0, min(10.0, deadline - time.monotonic())) * 1000)
        config: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "request_timeout_ms": budget_ms,
            "enable_auto_commit": False,  # there is no group; this silences kafka-python's warning
        }
        # kafka-python 3.x has bootstrap_timeout_ms; without it the first connection may wait 30 s.
        if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG:
            config["bootstrap_timeout_ms"] = budget_ms
        # api_version left unset: kafka-python probes the broker; an old pinned tuple would ask Kafka 4 for
        # protocol versions it removed.
        try:
            consumer = KafkaConsumer(**config)
        except (KafkaError, OSError) as exc:
            self._last_check_error = repr(exc)
            return False
        try:
            consumer.topics()
            return True
        except (KafkaError, OSError) as exc:
            self._last_check_error = repr(exc)
            return False
        finally:
            consumer.close()

    def create_topics(self, names: list[str], partitions: int = 1) -> list[str]:
        """Create the topics of ``names`` that do not exist yet; the ones created.

        Before any client asks for them: a producer or consumer that asks for a missing topic has it created
        on the fly, but kafka-python logs ``Topic ... not found in cluster metadata`` at ERROR meanwhile,
        which in a healthy run reads like a failure.
        """
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="alignd-local-kafka")
        try:
            missing = [name for name in dict.fromkeys(names) if name not in set(admin.list_topics())]
            if missing:
                try:
                    admin.create_topics(
                        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in missing]
                    )
                except TopicAlreadyExistsError:
                    pass  # another client created one meanwhile: it exists, which is all that was asked
            deadline = time.monotonic() + 30
            while set(missing) - set(admin.list_topics()) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            admin.close()
        logger.info("topics %s created on %s", ", ".join(missing) or "(none)", self.bootstrap_servers)
        return missing

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the broker down cleanly (SIGTERM runs Kafka's shutdown hook); SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            started = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=timeout)
                logger.info("Kafka (pid %d) stopped in %.1f s", proc.pid, time.monotonic() - started)
            except subprocess.TimeoutExpired:
                logger.warning("Kafka (pid %d) ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
                self._reap()
                return
        self._forget()

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; the next start() recovers the logs from disk."""
        if self._proc is not None:
            logger.info("killing Kafka (pid %d)", self._proc.pid)
        self._reap()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=30)
        self._forget()

    def _forget(self) -> None:
        if self._proc is not None:
            with _live_lock:
                _live.discard(self._proc)
        self._proc = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"LocalKafka({str(self.data_dir)!r}, port={self.port}, {state})"


class _PortTaken(Exception):
    """Kafka could not bind a port that was free when it was picked."""


# ---------------------------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            # No folder given: a throwaway broker whose data goes when it stops.
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alignd-kafka-")))
        else:
            data_dir = Path(args.data_dir)
        broker = LocalKafka(data_dir, cache_dir=args.cache_dir, heap=args.heap)
        broker.start(timeout=args.timeout)
        stack.callback(broker.stop)
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        while not stop_requested.wait(1.0):
            if not broker.is_running():
                logger.error(
                    "Kafka exited on its own; last lines of %s:\n%s",
                    broker.log_path,
                    _tail(broker.log_path, _LOG_TAIL_LINES),
                )
                return 1
        logger.info("stopping Kafka")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.local.kafka",
        description="A single-node Apache Kafka broker for tests and the demo.",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the jars are kept")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download Kafka's jars from Maven Central, then exit")
    run = sub.add_parser("run", help="run a broker until SIGTERM or SIGINT")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data folder, kept between runs (default: a temporary folder, deleted at exit)",
    )
    run.add_argument("--heap", default="512m", help="JVM maximum heap (default: 512m)")
    run.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the broker to start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    # kafka-python's per-connection INFO lines are noise here.
    logging.getLogger("kafka").setLevel(logging.WARNING)

    if args.command == "fetch":
        print(ensure_jars(args.cache_dir))
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
