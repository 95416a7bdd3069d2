"""The bias figures of saved models, as docs/bias.md reports them: ``python -m trainers.bias_report``.

    python -m trainers.bias_report --reward-dir DIR                 # a saved or downloaded reward model
    python -m trainers.bias_report --policy SmolLM2-135M-Instruct   # a base policy (or --policy-dir DIR)
    python -m trainers.bias_report --reward-dir DIR --policy SmolLM2-135M-Instruct --policy-items 8 --json out.json

It measures with the same code the training gates use (:func:`trainers.bias.reward_bias`,
:func:`trainers.bias.policy_bias`, greedy answers judged by :class:`trainers.safety.SafetyJudge`) and the
default :class:`trainers.gates.GateConfig`, then prints one markdown row per measure and attribute and the
gate's verdict. Nothing is registered or recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from trainers import bias
from trainers.gates import GateConfig


def _rows(evaluation: bias.BiasEvaluation, config: GateConfig) -> list[str]:
    pct = f"{config.confidence:.0%}"
    out = [
        f"| measure | attribute | items | largest gap (groups) | {pct} interval | mean abs swap ({pct}) | max abs swap |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in evaluation.measured:
        w = f.worst
        out.append(
            f"| {f.measure} | {f.attribute} | {f.n} | {w.estimate:+.3f} ({w.a} vs {w.b}) | {w.low:+.3f} to {w.high:+.3f} "
            f"| {f.mean_abs:.3f} ({f.mean_abs_low:.3f}-{f.mean_abs_high:.3f}) | {f.max_abs:.3f} |"
        )
    r = evaluation.result
    out.append(f"\ngate: {r.outcome} (deciding value {r.value:.3f}, bound {r.threshold:.3f}): {r.to_decide or ''}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-dir", type=Path, help="a reward model folder (RewardModel.save / MLflow download)")
    parser.add_argument("--policy", help="a policy model name, e.g. SmolLM2-135M-Instruct (the base, no adapter)")
    parser.add_argument("--policy-dir", type=Path, help="a saved or downloaded policy (adapter) folder")
    parser.add_argument("--reward-items", type=int, default=0, help="items per attribute scored (0: all)")
    parser.add_argument("--policy-items", type=int, default=8, help="items per attribute answered (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length (the evaluation default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the item sample")
    parser.add_argument("--templates", help="a templates YAML file (default: the packaged one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not (args.reward_dir or args.policy or args.policy_dir):
        parser.error("name a model: --reward-dir, --policy or --policy-dir")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from trainers.models import pick_runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = pick_runtime(prefer="cpu")
    config = GateConfig()
    report: dict[str, Any] = {}
    if args.reward_dir:
        from trainers.reward import RewardModel

        rm = RewardModel.load(args.reward_dir, runtime)
        started = time.monotonic()
        judged = bias.reward_bias(rm.score, bias.suite_items(args.templates, args.reward_items, args.seed), config)
        report["reward"] = _figures(judged, time.monotonic() - started)
        print("\n".join(_rows(judged, config)) + "\n")
    if args.policy or args.policy_dir:
        from trainers.config import PolicyConfig
        from trainers.policy import Policy
        from trainers.safety import SafetyJudge

        policy = (
            Policy.load(args.policy_dir, runtime)
            if args.policy_dir
            else Policy.create(PolicyConfig(model=args.policy), runtime)
        )
        items = bias.suite_items(args.templates, args.policy_items, args.seed)
        started = time.monotonic()
        judged = bias.policy_bias(
            lambda b: policy.complete(b, max_new_tokens=args.max_new_tokens), SafetyJudge(), items, config
        )
        report["policy"] = _figures(judged, time.monotonic() - started)
        print("\n".join(_rows(judged, config)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0


def _figures(evaluation: bias.BiasEvaluation, seconds: float) -> dict[str, Any]:
    r = evaluation.result
    return {
        "seconds": round(seconds, 1),
        "gate": {"outcome": r.outcome, "value": r.value, "threshold": r.threshold, "detail": r.detail},
        "tags": evaluation.tags,
        "metrics": evaluation.metrics,
        "group_means": {f"{f.measure}.{f.attribute}": f.group_means for f in evaluation.measured},
    }


if __name__ == "__main__":
    sys.exit(main())
