"""Reward attributions per second on the CPU (trainers/attribution.py), at the default step count.

One attribution is integrated gradients over ``steps`` interpolated copies of one (prompt, response): forward and
backward passes of the reward model (all-MiniLM-L6-v2 + LoRA + head, the offline default) on ``steps`` sequences
of the text's length. The cost grows with the number of tokens, so the figure is given for a few lengths.

    .venv/bin/python -m bench.attribution_bench [--runs 3] [--steps 32] [--threads N]

Prints a table and writes bench/results/attribution.json (the machine, its load before and after, every run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.harness import code_version, loadavg, write_results
from trainers.attribution import DEFAULT_STEPS, attribute_reward
from trainers.config import RewardConfig
from trainers.models import pick_runtime
from trainers.reward import RewardModel

RESULTS = Path(__file__).resolve().parent / "results" / "attribution.json"
PROMPT = "Could you explain how a river forms its delta, and why some rivers have none?"
SENTENCE = "Sediment carried by the current settles where the river meets slower water, building new land. "


def cases() -> list[tuple[str, str]]:
    """(name, response) for a short, a medium and a long response (the long one near the 256-token limit)."""
    return [
        ("short", "Sediment settles where the river slows."),
        ("medium", SENTENCE * 3),
        ("long", SENTENCE * 11),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed attributions per length (after one warm-up)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = loadavg()
    rm = RewardModel.create(RewardConfig(seed=0), runtime=pick_runtime(prefer="cpu"))
    rows = []
    for name, response in cases():
        attribute_reward(rm, PROMPT, response, steps=args.steps)  # warm-up
        seconds, last = [], None
        for _ in range(args.runs):
            start = time.perf_counter()
            last = attribute_reward(rm, PROMPT, response, steps=args.steps)
            seconds.append(time.perf_counter() - start)
        assert last is not None
        median = statistics.median(seconds)
        rows.append(
            {
                "case": name,
                "tokens": len(last.tokens),
                "response_tokens": sum(t.part == "response" for t in last.tokens),
                "seconds": [round(s, 4) for s in seconds],
                "median_s": round(median, 4),
                "attributions_per_s": round(1.0 / median, 3),
                "relative_delta": last.relative_delta,
            }
        )
        print(
            f"{name:<7} {len(last.tokens):>4} tokens  {median:7.3f} s  {1.0 / median:6.2f} attributions/s  "
            f"completeness gap {last.relative_delta:.2%}"
        )
    document = {
        "benchmark": "attribution",
        "steps": args.steps,
        "method": "integrated gradients, Gauss-Legendre, pad baseline (trainers/attribution.py)",
        "model": "all-MiniLM-L6-v2 + LoRA r16 + mean-pooled head, fp32, CPU",
        "runs": args.runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "code": code_version(),
        "results": rows,
    }
    write_results(args.out, document)
    print(f"load average before {load_before}, after {document['loadavg_after']}; wrote {args.out}")
    return document


if __name__ == "__main__":
    main()
