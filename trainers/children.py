"""Child-process supervision: run a training or evaluation process so that nothing it does takes the daemon down.

A child runs in its own process group (torchrun's workers included) under a wall-clock timeout and a memory
limit, and is polled for a cancel reason (the daemon stopping). The memory limit is on resident memory, summed
over the process group from /proc, because RLIMIT_AS breaks CUDA's address-space reservations. Before exec the
child asks the kernel to kill it when the daemon dies (:func:`die_with_parent`), so a killed daemon never leaves
a trainer running unseen. Used by :mod:`trainers.jobs` (training) and :mod:`trainers.champion_eval` (continuous
evaluation); the daemon may use :func:`die_with_parent` for its own children.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobLimits:
    timeout_s: float = 3600.0
    memory_limit_mb: int | None = None
    #: Processes for data-parallel training (torchrun); 1 trains in one child process.
    nproc: int = 1
    device: str = "auto"


def rss_mb(pgid: int) -> float:
    """Resident memory of every process in the job's process group (torchrun's workers included)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def die_with_parent() -> None:
    """In the child, before exec: be killed if the daemon dies (SIGKILL, OOM) instead of training on unseen.

    Its own session keeps terminal signals away; PR_SET_PDEATHSIG brings the daemon's death to it. The job
    is then resumed from its checkpoint by the next leader (a ``training.started`` without an outcome).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the child outlives a killed daemon, and its result is never recorded


def run_child(
    command: list[str], limits: JobLimits, *, poll_s: float = 0.5, cancel: Callable[[], str | None] | None = None
) -> tuple[int | None, str | None]:
    """Run ``command`` in its own process group; (exit code, reason it was stopped or None).

    ``cancel`` is polled: a reason it returns stops the job like a timeout does (the daemon stopping).
    """
    proc = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent)
    deadline = time.monotonic() + limits.timeout_s
    reason = None
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                reason = f"timed out after {limits.timeout_s:g} s"
            elif limits.memory_limit_mb is not None and (rss := rss_mb(proc.pid)) > limits.memory_limit_mb:
                reason = f"exceeded the memory limit of {limits.memory_limit_mb} MiB (resident {rss:.0f} MiB)"
            elif cancel is not None:
                reason = cancel()
            if reason:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(poll_s)
    except BaseException:
        # The daemon is stopping: do not leave a trainer running without a parent.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        raise
    return proc.returncode, reason
