"""What a user of ``alignd demo`` sees, and what outlives it, from one run of the quick demo (CI's slowest step):

* the story's outcome: the rude release (an adapter fine-tuned on rude rewrites) served, its real answers
  thumbed down through ``/v1/feedback``, rolled back, and the version rolled back to served in its place, its
  answers far less rude; five versions registered, the audit chain intact (its JSON summary, and the saved config's
  ``events count`` and ``audit verify``);
* the quick demo's terminal: its steps in order ("step n of N", each with its measured time), milestones, and
  nothing else: no ERROR line, no warning; every log line in ``alignd.log`` in the demo folder, as JSON lines;
* ``--keep-running``: after the story the broker, the review page and the MLflow UI stay up until Ctrl-C; the
  saved config runs ``alignd run --role monitor`` meanwhile, the review page links to the MLflow UI (which
  answers), and Ctrl-C stops everything, exit 0, no process left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import alignd, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 8  # daemon/demo.py STEPS without "serve"
DEMO_S = 900  # the quick demo takes about 4 minutes on an idle 2-core machine, 9 or more on a busy one


def _problems(terminal: str) -> list[str]:
    """Terminal lines a healthy run must not show: errors, warnings, log records (they belong in the log)."""
    return [
        line
        for line in terminal.splitlines()
        if re.search(r"error|warning|traceback", line, re.IGNORECASE) or line.lstrip().startswith("{")
    ]


def _assert_steps_in_order(terminal: str, total: int) -> None:
    announced = [int(n) for n in re.findall(rf"^step (\d+) of {total}: .+ \(about .+\)$", terminal, re.MULTILINE)]
    done = [int(n) for n in re.findall(rf"^  step (\d+) of {total} done in \d+", terminal, re.MULTILINE)]
    assert announced == list(range(1, total + 1)), terminal
    assert done == list(range(1, total + 1)), terminal


def _assert_json_log(log: Path) -> None:
    lines = log.read_text().splitlines()
    assert len(lines) > 20
    entries = [json.loads(line) for line in lines]  # every line, the training children's included
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    assert [e for e in entries if e["level"] in ("ERROR", "CRITICAL")] == []
    assert any(e["logger"].startswith("trainers.") and "job" in e for e in entries)  # a child's line
    assert any(e["logger"].startswith("mlflow") for e in entries)  # MLflow's logger, in our format


class _Lines:
    """A child's stderr, read line by line in a thread (so the child never blocks on a full pipe)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def value(self, label: str) -> str:
        [value] = [line.split(label, 1)[1].strip() for line in self.lines if line.strip().startswith(label)]
        return value


def _cli(folder: Path, args: list[str]) -> dict[str, object]:
    """``alignd --config <the demo's saved config> ARGS --json``, as a process, its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "--config", str(folder / "alignd.yaml"), *args],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read().decode("utf-8", "replace")


def _processes_naming(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.mark.timeout(
    DEMO_S + 120 + 8 + 120 + 60 + 120 + 60
)  # waits: the demo, the monitor's run and stop, pages, Ctrl-C
def test_the_quick_demo_end_to_end_then_serving_what_its_saved_config_points_at(tmp_path: Path) -> None:
    """One run of the quick demo (it is the slowest thing CI does) checked as a user and an operator would:
    the story's outcome (its JSON summary), its terminal, its log, and what outlives the story."""
    folder = tmp_path / "demo"
    demo = alignd(
        ["demo", "--quick", "--keep-running", "--json", "--dir", str(folder)],
        {},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    terminal = _Lines(demo)
    try:
        wait_until(
            lambda: any("running until Ctrl-C" in line for line in terminal.lines) or demo.poll() is not None,
            timeout=DEMO_S,
            interval=1.0,
            message="the demo to serve",
        )
        assert demo.poll() is None, terminal.text()
        _assert_steps_in_order(terminal.text(), STEPS + 1)
        milestones = [line.strip() for line in terminal.lines if line.strip().startswith("✓")]
        assert "Kafka on" in milestones[0] and "first release" in milestones[1], milestones
        assert any("rolled the champion back" in m for m in milestones) and "audit trail" in milestones[-1]
        # Promotions go through the gates: the first reward model passes them, the vendor's release is refused.
        assert "✓ alignd-reward v1 passed its gates and was promoted to champion" in milestones, milestones
        assert any(m.startswith("✓ the gates refused alignd-policy v2 (failed") for m in milestones), milestones
        _assert_json_log(folder / "alignd.log")
        saved = (folder / "alignd.yaml").read_text()
        assert "# Written by `alignd demo`" in saved and '"level": "INFO"' in saved

        # What the story did, read back through the saved config as an operator would.
        counted = _cli(folder, ["events", "count", "--json"])["by_type"]
        assert counted["model.rolled_back"] >= 1 and counted["model.registered"] == 5, counted
        verified = _cli(folder, ["audit", "verify", "--json"])
        assert verified["ok"] and verified["records"] >= 10, verified
        page, ui = terminal.value("review page:"), terminal.value("MLflow UI:")

        # The saved config works while the demo serves: the monitor role reaches the broker and stops cleanly.
        monitor = alignd(
            ["--config", str(folder / "alignd.yaml"), "run", "--role", "monitor"], {}, stderr=subprocess.PIPE
        )
        monitor_lines = _Lines(monitor)
        wait_until(
            lambda: "monitor: detectors toxicity" in monitor_lines.text() or monitor.poll() is not None,
            timeout=120,
            message="the monitor role to start",
        )
        time.sleep(8)  # its parts running: the outboxes reach the broker
        assert monitor.poll() is None, monitor_lines.text()
        monitor.send_signal(signal.SIGTERM)
        assert monitor.wait(timeout=120) == 0, monitor_lines.text()
        said = monitor_lines.text()
        assert '"level": "ERROR"' not in said and "Kafka error" not in said and "NoBrokers" not in said, said
        assert "monitor: detectors toxicity" in said  # the role says what it serves

        # The review page links its records to the MLflow UI, which answers.
        status, listing = _get(page)
        assert status == 200
        positions = sorted(set(re.findall(r'href="/audit/(\d+)"', listing)), key=int)
        linked = []
        for position in positions:
            _, record = _get(f"{page}/{position}")
            linked += re.findall(rf'href="({re.escape(ui)}/#/[^"]+)"', record)
            if linked:
                break
        assert linked, f"no record of {page} links to {ui}"
        assert _get(ui)[0] == 200
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
            raise
    assert code == 0, terminal.text()
    assert _problems(terminal.text()) == []
    assert demo.stdout is not None
    summary = json.loads(demo.stdout.read())  # printed when the story ended, before the serving
    assert summary["ok"] and summary["audit"]["intact"]
    assert summary["events"]["model.rolled_back"] >= 1 and summary["events"]["model.registered"] == 5
    assert summary["audit"]["by_action"]["enforcement.applied"] >= 2
    # The incident happened to served answers: the release answered rudely, users said so, the swap ended it.
    incident = summary["incident"]
    before, after = incident["before"], incident["after"]
    assert before["answers"] >= 20 and before["thumbs_down"] >= 1, incident
    assert after["answers"] >= 10 and incident["rolled_back_to"] != incident["release"], incident
    # Greedy, the quick demo's rude release answered all 24 questions rudely and its predecessor none of 16
    # (measured); sampled, 42-47%. The monitor fires on a window of 20 with 11 rude: the bounds leave room.
    assert before["rude_rate"] >= 0.3 and after["rude_rate"] <= before["rude_rate"] - 0.2, incident
    assert counted["feedback.received"] >= before["thumbs_down"], counted
    assert summary["log"] == str(folder / "alignd.log")
    assert [t["step"] for t in summary["timings"]] == list(range(1, STEPS + 1))
    wait_until(lambda: not _processes_naming(str(folder)), timeout=60, message="the demo's processes to exit")
