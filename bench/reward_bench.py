"""Reward model: alignd's trainer against TRL's ``RewardTrainer`` on HH-RLHF harmless-base, same model and data.

    python -m bench.reward_bench                            # 1,156 train / 1,156 held-out pairs, 2 repeats
    python -m bench.reward_bench --threads 1 --repeats 1 --seed 0   # docs/benchmarks.md: seeds 0 and 1 as two
                                                                    # processes side by side (2 cores, ~40 min)
    python -m bench.reward_bench --train-pairs 64 --held-pairs 128 --repeats 1   # quick (a few minutes)
    python -m bench.reward_bench --device cuda --bf16       # on a GPU machine
    python -m bench.reward_bench --profile                  # plus a cProfile of alignd's loop

Data: ``--data`` (default ``../shared/data/hh-rlhf/harmless-base-test.jsonl.gz``, read in place), 2,312 pairs
split 50/50 by line order: the first half trains, the second half is held out. ``--train-pairs`` /
``--held-pairs`` take the first N of each half.

Choosing settings: ``--split validation`` carves a validation split out of the training half (its last
``--validation-fraction``, 20% by default: 231 pairs), trains on the rest and scores the validation split; the
held-out half is not read. Compare settings that way, then run each setting you adopt once with ``--split
heldout`` (the default) for the figure to report, so that no held-out figure steers a choice
(docs/benchmarks.md says which earlier figures were chosen while looking at the held-out half). Both trainers read the same texts: each whole dialogue
(``chosen`` / ``rejected``), stripped.

Model: all-MiniLM-L6-v2 (the packaged copy, ``trainers.models.resolve_reward_backbone``) with a one-output head
on the mean of its token states (``--pooling mean``, ``trainers.reward_head``; ``--pooling head`` for BERT's own
classifier over the pooler), loaded by ``trainers.models.load_reward_backbone`` for each run after the same seed
(so both sides start from the same head), and the same LoRA (``RewardConfig``'s default: r 16, alpha 32 on every
linear layer of the six blocks; the head trained in full, peft's ``SEQ_CLS`` task). Epochs, learning rate, its
schedule and dropout are ``RewardConfig``'s defaults unless given.

* alignd: ``RewardModel`` + ``RewardObjective`` + ``trainers.loop.train`` (no held-out rows passed, so no
  evaluation inside the timed loop; no checkpoints). It tokenizes each batch as it goes, truncating from the
  left to ``--max-length`` (the last turns are kept), and runs a batch's chosen and rejected texts through the
  model in length-sorted groups (``RewardConfig.sequences_per_forward``: 4 on the CPU by default, each group
  padded to its own longest; ``--sequences-per-forward 0`` pads the whole batch in one pass, as TRL does).
* TRL: ``RewardTrainer`` with a backbone loaded by the same function (unwrapped) and the same ``peft_config``, the
  same tokenizer as ``processing_class``, and a dataset already tokenized exactly as alignd does (left truncation to
  ``--max-length``). Left to itself TRL would *drop* pairs longer than ``max_length`` instead of truncating them,
  and append an EOS token the BERT tokenizer does not have; pre-tokenizing (TRL's documented ``chosen_ids`` /
  ``rejected_ids`` path) makes both sides see identical token ids, and TRL does that tokenization up front, outside
  ``train()``, anyway. Settings matched to alignd's loop: same learning rate, batch size and epochs, the same
  schedule (``lr_scheduler_type`` and ``warmup_steps`` from ``RewardConfig``'s ``lr_schedule`` and ``warmup_ratio``;
  transformers' warm-up starts its first step at 0, alignd's at 1/warm-up steps), weight decay 0.01
  (``torch.optim.AdamW``'s default, which alignd uses), gradient clipping at 1.0, no gradient checkpointing
  (TRL's default is on), every dropout at 0 on both sides (alignd's ``RewardConfig.disable_dropout``, TRL's own
  default ``disable_dropout=True``; ``--dropout on`` keeps it on both sides), no centering loss, no evaluation,
  logging or saving during training, ``report_to=[]``, no data-loader workers, fp32 on CPU (``--bf16`` for mixed
  precision on CUDA: TRL's ``bf16=True``, alignd's own autocast). TRL keeps its default optimizer
  (``adamw_torch_fused``) and its collator, which pads each batch (chosen and rejected together) to its longest
  sequence; its ``RewardTrainer`` has no padding-free mode.

Measured: pairs/s = training pairs x epochs / seconds of the training call alone (``trainers.loop.train`` for
alignd, ``trainer.train()`` for TRL; model loading, tokenization by TRL's constructor and evaluation are outside
it); the same per CPU-second of this process (steadier than wall time where other processes share the cores: with
``--threads 1`` it is the work each trainer does); held-out accuracy (share of pairs with r(chosen) > r(rejected))
and mean margin, both sides scored by the same code (``RewardObjective.evaluate``, the model in eval mode, the same
truncation). Each repeat runs both trainers one after the other in this process (after an untimed warm-up of each,
``--warmup-steps``); repeat ``i`` uses seed ``--seed + i`` on both sides and runs alignd first where that seed is
even, TRL first where it is odd, so that load from other processes falls on both alike (also across one-repeat
processes of seeds 0 and 1). Medians over repeats are reported. Prints a table and writes
``bench/results/reward.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import gzip
import io
import json
import logging
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from trainers.config import RewardConfig  # noqa: E402
from trainers.models import peft_lora_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
BACKBONE = "all-MiniLM-L6-v2"
#: The reward trainer's own defaults (epochs, learning rate and its schedule, pooling) are the bench's.
DEFAULTS = RewardConfig()
TARGETS = {"accuracy_points_within": 1.0, "throughput_ratio_at_least": 1.0, "heldout_accuracy_at_least": 0.65}

logger = logging.getLogger("bench.reward")


# --- shared with bench.dpo_bench ---------------------------------------------------------------------------


def load_hh(path: Path) -> list[dict[str, str]]:
    """HH-RLHF rows {"chosen", "rejected"} in file order."""
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_half(rows: list[Any]) -> tuple[list[Any], list[Any]]:
    """The fixed split: first half trains, second half is held out (line order, no shuffling)."""
    half = len(rows) // 2
    return rows[:half], rows[half:]


def carve_validation(train: list[Any], fraction: float) -> tuple[list[Any], list[Any]]:
    """(train, validation): the training half's last ``fraction`` (line order) validates settings."""
    if not 0 < fraction < 1:
        raise SystemExit(f"--validation-fraction must be within (0, 1), got {fraction}")
    cut = len(train) - max(1, round(fraction * len(train)))
    return train[:cut], train[cut:]


def make_runtime(device: str, bf16: bool) -> Any:
    from trainers.models import Runtime, pick_runtime

    if device == "cpu":
        return pick_runtime(prefer="cpu")
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    return Runtime(torch.device("cuda", 0), torch.bfloat16 if bf16 else torch.float32)


def quiet_libraries() -> None:
    import warnings

    import datasets
    import transformers

    # transformers 5 warns on every training step that a name it reads itself is deprecated.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("trainers").setLevel(logging.WARNING)


def trl_common_args(args: argparse.Namespace, output_dir: str, seed: int) -> dict[str, Any]:
    """TrainingArguments that make TRL's loop do what alignd's does (see the module docstrings)."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": False,
        "disable_dropout": args.dropout == "off",
        "bf16": bool(args.bf16 and args.device == "cuda"),
        "fp16": False,
        "use_cpu": args.device == "cpu",
        "seed": seed,
        "data_seed": seed,
        "report_to": [],
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": args.device == "cuda",
        "remove_unused_columns": True,
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def timed(device: str) -> Iterator[dict[str, float]]:
    """Wall and process-CPU seconds of the block (CPU / wall shows how many cores it really had)."""
    out: dict[str, float] = {}
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    sync(device)
    out["seconds"] = time.perf_counter() - wall
    out["cpu_seconds"] = time.process_time() - cpu


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def machine_info(device: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    load = None
    with contextlib.suppress(OSError):
        load = os.getloadavg()
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "python": sys.version.split()[0],
        **{name: pkg(name) for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets")},
    }


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def profile_summary(profiler: cProfile.Profile, path: Path, top: int = 30) -> str:
    profiler.dump_stats(str(path))
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def run_repeats(
    sides: dict[str, Callable[[int, bool], dict[str, Any]]], repeats: int, seed: int, warmup: bool
) -> dict[str, list[dict[str, Any]]]:
    """Every side once per repeat, one after the other, the order reversed where the repeat's seed is odd.

    By seed rather than by repeat so that one-repeat processes run side by side (``--seed 0`` and ``--seed 1``,
    the recipe in docs/benchmarks.md) are balanced too.

    ``side(seed, warmup)`` trains and returns figures; with ``warmup`` it takes a few steps that are not kept, so
    one-time costs (lazy imports, allocator growth, kernel selection) fall on neither measured run.
    """
    names = list(sides)
    if warmup:
        for name in names:
            print(f"warm-up: {name} ...", flush=True)
            sides[name](seed, True)
            free_memory()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for repeat in range(repeats):
        for name in names if (seed + repeat) % 2 == 0 else names[::-1]:
            print(f"repeat {repeat + 1}/{repeats}: {name} ...", flush=True)
            result = sides[name](seed + repeat, False)
            result["repeat"] = repeat
            runs[name].append(result)
            print(f"  {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float)))
            free_memory()
    return runs


def remove_printer(trainer: Any) -> None:
    """Trainer prints a dict of metrics at the end when tqdm is off; the table says it all."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


# --- the reward benchmark ----------------------------------------------------------------------------------


def reward_rows(pairs: list[dict[str, str]], prefix: str) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "chosen_text": p["chosen"].strip(), "rejected_text": p["rejected"].strip()}
        for i, p in enumerate(pairs)
    ]


def reward_config(args: argparse.Namespace, seed: int) -> Any:
    return RewardConfig(
        model=BACKBONE,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_length=args.max_length,
        pooling=args.pooling,
        seed=seed,
        eval_fraction=0.0,
        eval_batch_size=args.eval_batch_size,
        checkpoint_every=0,
        disable_dropout=args.dropout == "off",
        sequences_per_forward=args.sequences_per_forward,
        lora=dataclasses.replace(DEFAULTS.lora, r=args.lora_r, alpha=2 * args.lora_r),
    )


def evaluate_reward(model: Any, config: Any, runtime: Any, held: list[dict[str, Any]]) -> dict[str, float]:
    """Held-out accuracy and margin by alignd's own evaluation, for either side's trained model."""
    from trainers.models import load_tokenizer
    from trainers.reward import RewardModel, RewardObjective

    scorer = RewardModel(model, load_tokenizer(config.model, kind="reward"), runtime, config.max_length, config.model)
    model.eval()
    with torch.no_grad():
        return RewardObjective(scorer, config).evaluate(held)


def run_alignd(
    args: argparse.Namespace,
    runtime: Any,
    train: list[dict[str, Any]],
    held: list[dict[str, Any]],
    seed: int,
    warmup: bool = False,
) -> dict[str, Any]:
    from trainers.loop import train as train_loop
    from trainers.reward import RewardModel, RewardObjective

    if warmup:
        train, held = train[: args.warmup_steps * args.batch_size], []
    config = reward_config(args, seed)
    rm = RewardModel.create(config, runtime)
    objective = RewardObjective(rm, config)
    losses: list[float] = []

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        if "loss" in metrics:
            losses.append(metrics["loss"])

    profiler = cProfile.Profile() if args.profile and not warmup else None
    with timed(args.device) as t:
        if profiler:
            profiler.enable()
        result = train_loop(objective, rm.model, train, [], config, on_metrics=on_metrics, description="alignd reward")
        if profiler:
            profiler.disable()
    out = _train_figures(t, len(train) * args.epochs, result.steps, statistics.fmean(losses))
    if profiler:
        path = RESULTS_DIR / f"reward_alignd_seed{seed}.prof"
        out["profile"] = str(path)
        print(profile_summary(profiler, path))
    if held:
        with timed(args.device) as e:
            metrics = evaluate_reward(rm.model, config, runtime, held)
        out.update(accuracy=metrics["accuracy"], margin=metrics["margin"], eval_seconds=e["seconds"])
    del rm, objective
    return out


def tokenize_pairs(rows: list[dict[str, Any]], max_length: int) -> dict[str, list[list[int]]]:
    """chosen_ids / rejected_ids exactly as ``RewardModel.encode`` makes them (left truncation)."""
    from trainers.models import load_tokenizer

    tokenizer = load_tokenizer(BACKBONE, kind="reward")
    tokenizer.truncation_side = "left"

    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    return {
        "chosen_ids": ids([r["chosen_text"] for r in rows]),
        "rejected_ids": ids([r["rejected_text"] for r in rows]),
    }


def run_trl(
    args: argparse.Namespace,
    runtime: Any,
    train: list[dict[str, Any]],
    held: list[dict[str, Any]],
    seed: int,
    warmup: bool = False,
) -> dict[str, Any]:
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    from trainers.models import load_reward_backbone, load_tokenizer

    if warmup:
        train, held = train[: args.warmup_steps * args.batch_size], []
    config = reward_config(args, seed)
    torch.manual_seed(seed)  # as RewardModel.create: the same freshly initialised head as alignd's
    backbone = load_reward_backbone(BACKBONE, runtime, config.pooling)
    tokenizer = load_tokenizer(BACKBONE, kind="reward")
    dataset = Dataset.from_dict(tokenize_pairs(train, args.max_length))
    steps = math.ceil(len(train) / args.batch_size) * args.epochs
    with tempfile.TemporaryDirectory(prefix="reward-bench-") as tmp:
        trl_args = TRLRewardConfig(
            **{
                **trl_common_args(args, tmp, seed),
                # alignd's schedule (trainers.loop.lr_factor): the same warm-up steps, then linear decay or constant.
                "lr_scheduler_type": config.lr_schedule,
                "warmup_steps": math.ceil(config.warmup_ratio * steps),
            },
            num_train_epochs=args.epochs,
            max_length=args.max_length,
            center_rewards_coefficient=None,
        )
        trainer = RewardTrainer(
            model=backbone,
            args=trl_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_lora_config(backbone, config.lora, task="reward"),
        )
        remove_printer(trainer)
        with timed(args.device) as t:
            output = trainer.train()
    out = _train_figures(t, len(train) * args.epochs, output.global_step, float(output.training_loss))
    if held:
        with timed(args.device) as e:
            metrics = evaluate_reward(trainer.model, config, runtime, held)
        out.update(accuracy=metrics["accuracy"], margin=metrics["margin"], eval_seconds=e["seconds"])
    del trainer, backbone
    return out


def _train_figures(t: dict[str, float], pairs: int, steps: int, mean_loss: float) -> dict[str, Any]:
    return {
        "steps": steps,
        "pairs": pairs,
        "train_seconds": t["seconds"],
        "train_cpu_seconds": t["cpu_seconds"],
        "cores_used": t["cpu_seconds"] / t["seconds"],
        "pairs_per_s": pairs / t["seconds"],
        "pairs_per_cpu_s": pairs / t["cpu_seconds"],
        "mean_train_loss": mean_loss,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reward_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF jsonl(.gz) with chosen/rejected")
    parser.add_argument("--train-pairs", type=int, default=0, help="first N pairs of the train half (0: all)")
    parser.add_argument("--held-pairs", type=int, default=0, help="first N pairs of the held-out half (0: all)")
    parser.add_argument(
        "--split",
        choices=("heldout", "validation"),
        default="heldout",
        help="score the held-out half (report once per adopted setting) or a validation split carved from the "
        "training half (choose settings with it)",
    )
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="share of the training half")
    parser.add_argument(
        "--max-length", type=int, default=DEFAULTS.max_length, help="tokens per sequence (left truncation)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="pairs per evaluation forward pass")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument(
        "--pooling", choices=("mean", "head"), default=DEFAULTS.pooling, help="what the scalar head reads (both sides)"
    )
    parser.add_argument(
        "--sequences-per-forward",
        type=int,
        default=DEFAULTS.sequences_per_forward,
        help="alignd: length-sorted sequences per forward pass (0: the whole batch, padded to its longest; "
        "default: RewardConfig's, 4 on the CPU)",
    )
    parser.add_argument(
        "--lora-r",
        type=int,
        default=DEFAULTS.lora.r,
        help="LoRA rank, alpha twice it (both sides; default: the config's)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (medians are reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat (+1 each repeat)")
    parser.add_argument("--sides", default="alignd,trl", help="comma-separated subset of alignd,trl")
    add_runtime_args(parser)
    parser.add_argument("--output", type=Path, default=None, help="default: reward.json, reward-validation.json")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS_DIR / ("reward.json" if args.split == "heldout" else "reward-validation.json")
    return args


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps of each side before measuring")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CUDA only)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); on a machine other processes share, fewer threads than cores "
        "avoids threads waiting on a preempted sibling",
    )
    parser.add_argument(
        "--dropout",
        choices=("on", "off"),
        default=None,
        help="dropout modules on or at 0 on both sides (alignd's disable_dropout, TRL's disable_dropout); "
        "default: the alignd trainer config's default (off for the reward model, on for the policy)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile alignd's training loop (.prof in results)")


def resolve_dropout(args: argparse.Namespace, disable_by_default: bool) -> None:
    """``--dropout`` as given, or the trainer config's default."""
    if args.dropout is None:
        args.dropout = "off" if disable_by_default else "on"


def apply_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    resolve_dropout(args, DEFAULTS.disable_dropout)
    apply_threads(args.threads)
    quiet_libraries()
    runtime = make_runtime(args.device, args.bf16)
    pairs = load_hh(args.data)
    train_pairs, held_pairs = split_half(pairs)
    if args.split == "validation":
        # The held-out half is not read: settings are compared on pairs carved from the training half.
        train_pairs, held_pairs = carve_validation(train_pairs, args.validation_fraction)
    train = reward_rows(train_pairs[: args.train_pairs or None], "train")
    held = reward_rows(held_pairs[: args.held_pairs or None], "held" if args.split == "heldout" else "validation")
    scored = "held out" if args.split == "heldout" else "validation (from the training half)"
    print(
        f"HH-RLHF harmless-base: {len(pairs)} pairs; training on {len(train)}, {scored} {len(held)}; "
        f"{BACKBONE}, max_length {args.max_length}, batch {args.batch_size}, {args.epochs} epoch(s), "
        f"lr {args.learning_rate:g} ({DEFAULTS.lr_schedule}, warm-up {DEFAULTS.warmup_ratio:g}), "
        f"{args.pooling} pooling, {args.device}{' bf16' if args.bf16 else ''}, {torch.get_num_threads()} threads"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    sides = {
        "alignd": lambda seed, warmup: run_alignd(args, runtime, train, held, seed, warmup),
        "trl": lambda seed, warmup: run_trl(args, runtime, train, held, seed, warmup),
    }
    wanted = args.sides.split(",")
    runs = run_repeats(
        {k: v for k, v in sides.items() if k in wanted}, args.repeats, args.seed, warmup=args.warmup_steps > 0
    )

    summary: dict[str, Any] = {}
    for name, side_runs in runs.items():
        summary[name] = {
            key: median_of(side_runs, key)
            for key in (
                "pairs_per_s",
                "pairs_per_cpu_s",
                "train_seconds",
                "train_cpu_seconds",
                "cores_used",
                "accuracy",
                "margin",
                "eval_seconds",
            )
        }
        summary[name]["accuracy_range"] = [min(r["accuracy"] for r in side_runs), max(r["accuracy"] for r in side_runs)]
        summary[name]["pairs_per_s_range"] = [
            min(r["pairs_per_s"] for r in side_runs),
            max(r["pairs_per_s"] for r in side_runs),
        ]
    comparison: dict[str, Any] = {}
    if "alignd" in runs and "trl" in runs:
        a, t = summary["alignd"], summary["trl"]
        per_repeat = [x["pairs_per_s"] / y["pairs_per_s"] for x, y in zip(runs["alignd"], runs["trl"], strict=True)]
        comparison = {
            "throughput_ratio": a["pairs_per_s"] / t["pairs_per_s"],
            "throughput_ratio_per_repeat": per_repeat,
            "cpu_throughput_ratio": a["pairs_per_cpu_s"] / t["pairs_per_cpu_s"],
            "accuracy_difference_points": 100 * (a["accuracy"] - t["accuracy"]),
        }
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(args.device),
        "data": {
            "path": str(args.data),
            "pairs": len(pairs),
            "split": args.split,
            "train_pairs": len(train),
            "held_pairs": len(held),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS,
        "runs": runs,
        "median": summary,
        "comparison": comparison,
    }
    print()
    print(f"{'trainer':<8} {'pairs/s':>8} {'(min-max)':>15} {'pairs/CPU-s':>11} {'train s':>8} {'cores':>6} "
          f"{'held-out acc' if args.split == 'heldout' else 'validation':>13} {'(min-max)':>13} {'margin':>7} {'eval s':>7}")  # fmt: skip
    for name, s in summary.items():
        lo, hi = s["pairs_per_s_range"]
        alo, ahi = s["accuracy_range"]
        print(f"{name:<8} {s['pairs_per_s']:>8.2f} {f'({lo:.2f}-{hi:.2f})':>15} {s['pairs_per_cpu_s']:>11.2f} "
              f"{s['train_seconds']:>8.1f} {s['cores_used']:>6.2f} {s['accuracy']:>13.4f} "
              f"{f'({alo:.3f}-{ahi:.3f})':>13} {s['margin']:>7.3f} {s['eval_seconds']:>7.1f}")  # fmt: skip
    if comparison:
        print(f"alignd / TRL pairs/s: {comparison['throughput_ratio']:.2f}x (per repeat: "
              + ", ".join(f"{r:.2f}" for r in comparison["throughput_ratio_per_repeat"]) + "); "
              f"pairs per CPU-second: {comparison['cpu_throughput_ratio']:.2f}x; "
              f"accuracy difference: {comparison['accuracy_difference_points']:+.1f} points")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
