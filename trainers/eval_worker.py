"""The child process of a continuous evaluation: ``python -m trainers.eval_worker SPEC.json``.

It loads the champions the parent downloaded, measures them with the code the training gates use
(:meth:`RewardObjective.evaluate` on held-out pairs, :func:`safety.run_safety_suite`,
:func:`evaluation.helpfulness`) and writes ``result.json`` with plain numbers; on an exception it writes
``error.json`` and exits non-zero. Like :mod:`trainers.worker`, it never opens the event store or MLflow: the
parent (:mod:`trainers.champion_eval`) turns the numbers into gates, events and tags.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainers import evaluation, safety
from trainers.config import EvaluationConfig, RewardConfig
from trainers.models import Runtime, pick_runtime
from trainers.policy import Policy
from trainers.reward import RewardModel, RewardObjective
from trainers.snapshot import hash_rows
from trainers.worker import open_spec, write_error

logger = logging.getLogger("trainers.eval_worker")


def _held_rows(part: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(part["held_path"]).read_text().splitlines() if line]
    if hash_rows(rows) != part["held_sha256"]:
        raise RuntimeError("the held-out file does not match the hash the parent recorded; refusing to evaluate")
    return rows


def evaluate_reward(rm: RewardModel, part: dict[str, Any], spec: dict[str, Any]) -> dict[str, float]:
    """Accuracy and mean margin on the held-out pairs, computed as training computes its candidate's."""
    rows = _held_rows(part)
    config = RewardConfig(eval_batch_size=spec.get("eval_batch_size", 32), loss=spec.get("loss", "bradley_terry"))
    measured = RewardObjective(rm, config).evaluate(rows)
    logger.info(
        "reward version %s: accuracy %.4f on %d held-out pairs", part["version"], measured["accuracy"], len(rows)
    )
    return {"accuracy": measured["accuracy"], "margin": measured["margin"], "pairs": float(len(rows))}


def evaluate_policy(
    policy: Policy, judge: RewardModel | None, part: dict[str, Any], eval_config: EvaluationConfig
) -> dict[str, float]:
    """The red-team suite and, with a reward model to judge, the mean reward of its answers.

    KL to the reference is left out: a registered adapter's distance from its base does not change after
    training, and its sampled estimate would only add noise and minutes.
    """
    tokens = eval_config.max_new_tokens

    def answer(batch: list[str]) -> list[str]:
        return policy.complete(batch, max_new_tokens=tokens)

    red_team = safety.load_red_team_prompts(eval_config.safety_per_source, eval_config.seed)
    report = safety.run_safety_suite(answer, red_team, safety.SafetyJudge())
    measured = {
        "unsafe_rate": report.unsafe_rate,
        "toxic_rate": report.toxic_rate,
        "compliance_rate": report.compliance_rate,
        "red_team_prompts": float(report.total),
    }
    prompts = list(part.get("prompts") or [])
    if judge is not None and prompts:
        measured["helpfulness"] = evaluation.helpfulness(answer, judge.score, prompts)
        measured["prompts"] = float(len(prompts))
    return measured


def run(spec: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    eval_config = EvaluationConfig(**spec.get("evaluation", {}))
    judge = RewardModel.load(Path(spec["judge_dir"]), runtime) if spec.get("judge_dir") else None
    result: dict[str, Any] = {}
    if spec.get("reward"):
        part = spec["reward"]
        same = judge is not None and part["model_dir"] == spec.get("judge_dir")
        rm = judge if same and judge is not None else RewardModel.load(Path(part["model_dir"]), runtime)
        result["reward"] = evaluate_reward(rm, part, spec)
    if spec.get("policy"):
        part = spec["policy"]
        policy = Policy.load(Path(part["model_dir"]), runtime)
        result["policy"] = evaluate_policy(policy, judge, part, eval_config)
    return result


def main(argv: list[str] | None = None) -> int:
    spec, out = open_spec(argv)
    started = time.monotonic()
    try:
        torch.manual_seed(spec.get("seed", 0))
        result = run(spec, pick_runtime(0, spec.get("device", "auto")))
        result["duration_s"] = round(time.monotonic() - started, 3)
        (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        return 0
    except Exception as exc:
        logger.exception("evaluation job %s failed", spec["job_id"])
        write_error(out, exc, spec)
        return 1


if __name__ == "__main__":
    sys.exit(main())
