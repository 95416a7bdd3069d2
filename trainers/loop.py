"""The training loop every objective shares: batches, AdamW, DDP, checkpoints, evaluation, early stopping.

An :class:`Objective` knows its data (how a batch becomes a loss, how held-out rows become metrics); this
loop knows the rest. Several processes (``torchrun --nproc-per-node N``) train data-parallel through
``torch.nn.parallel.DistributedDataParallel`` and ``DistributedSampler``; rank 0 alone checkpoints,
evaluates for early stopping and reports.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from trainers.config import TrainConfig
from trainers.losses import LossOutput

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


class Objective(Protocol):
    """A batch's loss and held-out metrics.

    Two optional parts, looked up with ``getattr``: ``losses(batch)``, a generator of one loss per optimizer step
    in place of ``loss`` (PPO and GRPO take several steps on each rollout; the generator computes each after the
    previous step), and ``modules``, trainable ``torch.nn.Module``s beside the adapter (PPO's value head) that the
    loop optimises and checkpoints with it. A loop step is one batch, however many optimizer steps it takes, so
    a resumed job starts at the batch after its checkpoint.
    """

    #: What forward passes that need gradients go through (the DDP wrapper when distributed).
    train_model: Any

    def loss(self, batch: Sequence[dict[str, Any]]) -> LossOutput: ...

    def evaluate(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Held-out metrics; ``score`` (higher is better) drives early stopping."""
        ...


@dataclass
class TrainResult:
    steps: int
    metrics: dict[str, float]
    resumed_from: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def lr_factor(step: int, total: int, warmup_steps: int, schedule: str) -> float:
    """The share of the base learning rate for optimizer step ``step`` (0-based) of ``total``.

    ``constant``: 1 after the warm-up. ``linear``: down to 0 at the end, as transformers'
    ``get_linear_schedule_with_warmup``. Warm-up rises linearly over the first ``warmup_steps``.
    A pure function of the step, so a resumed job takes up the schedule where the checkpoint left it.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup_steps))
    return 1.0


def _updates(objective: Objective, batch: Sequence[dict[str, Any]]) -> Iterator[LossOutput]:
    many = getattr(objective, "losses", None)
    return many(batch) if many is not None else iter([objective.loss(batch)])


def _extra_modules(objective: Objective) -> dict[str, torch.nn.Module]:
    return dict(getattr(objective, "modules", {}))


def _all_reduce_grads(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients of parameters DDP does not hold (the extra modules) over the processes."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)


class _Progress:
    """A rich bar in a terminal; a log line every so often otherwise (so daemon logs show progress too)."""

    def __init__(self, total: int, start: int, description: str, enabled: bool) -> None:
        self.total, self.description = total, description
        self.bar = None
        self.every = max(1, total // 10)
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, completed=start, info="")
        self.enabled = enabled

    def update(self, step: int, metrics: dict[str, float]) -> None:
        info = " ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:3])
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            logger.info("%s step %d/%d %s", self.description, step, self.total, info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(
    objective: Objective,
    model: Any,
    train_rows: Sequence[dict[str, Any]],
    held_rows: Sequence[dict[str, Any]],
    config: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
    description: str = "training",
    distributed: Distributed | None = None,
) -> TrainResult:
    """Train ``model``'s trainable (LoRA) parameters on ``train_rows``; resumes from ``checkpoint_dir``."""
    from torch.utils.data import DistributedSampler

    dist_info = distributed or Distributed()
    extra = _extra_modules(objective)
    extra_params = [p for m in extra.values() for p in m.parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad] + extra_params
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    objective.train_model = model
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist_info.local_rank] if next(model.parameters()).is_cuda else None
        objective.train_model = DistributedDataParallel(model, device_ids=device_ids)

    # The sampler only needs len(); indices into the rows are what it shards and shuffles.
    indices: Any = range(len(train_rows))
    sampler: DistributedSampler[int] = DistributedSampler(
        indices, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=config.seed
    )
    per_epoch = max(1, math.ceil(len(sampler) / config.batch_size))
    total = per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)

    warmup_steps = math.ceil(config.warmup_ratio * total)
    step, best_score, bad_evals, best_state = 0, -math.inf, 0, None
    history: list[dict[str, float]] = []
    checkpoint = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir else None
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        load_trainable_state(model, saved["adapter"])
        for name, module in extra.items():
            module.load_state_dict(saved["modules"][name])
        optimizer.load_state_dict(saved["optimizer"])
        step, best_score, bad_evals = saved["step"], saved["best_score"], saved["bad_evals"]
        best_state, history = saved.get("best_state"), saved.get("history", [])
        torch.random.set_rng_state(saved["rng"])
        logger.info("%s resumed from checkpoint at step %d/%d", description, step, total)
    resumed_from = step

    progress = _Progress(total, step, description, enabled=dist_info.is_main)
    last: dict[str, float] = {}
    stopped_early = False
    eval_every = config.eval_every or per_epoch
    try:
        while step < total and not stopped_early:
            epoch, offset = divmod(step, per_epoch)
            sampler.set_epoch(epoch)
            order = list(sampler)
            for index in range(offset, per_epoch):
                batch = [train_rows[i] for i in order[index * config.batch_size : (index + 1) * config.batch_size]]
                if not batch:
                    break
                model.train()
                for module in extra.values():
                    module.train()
                for group in optimizer.param_groups:
                    group["lr"] = config.learning_rate * lr_factor(step, total, warmup_steps, config.lr_schedule)
                for out in _updates(objective, batch):
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    if dist_info.world_size > 1 and extra_params:
                        _all_reduce_grads(extra_params, dist_info.world_size)
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                step += 1
                last = {"loss": out.loss.item(), **{f"train_{k}": v for k, v in out.metrics.items()}}
                if dist_info.is_main and on_metrics is not None:
                    on_metrics(last, step)
                progress.update(step, last)
                if held_rows and (step % eval_every == 0 or step == total) and config.early_stopping_patience:
                    score = _evaluate(objective, model, held_rows, dist_info, on_metrics, step, history)
                    if score > best_score:
                        best_score, bad_evals, best_state = score, 0, trainable_state(model)
                    else:
                        bad_evals += 1
                        if bad_evals >= config.early_stopping_patience:
                            stopped_early = True
                if (
                    checkpoint is not None
                    and dist_info.is_main
                    and config.checkpoint_every
                    and step % config.checkpoint_every == 0
                    and step < total
                ):
                    _save_checkpoint(
                        checkpoint, model, extra, optimizer, step, best_score, bad_evals, best_state, history
                    )
                if step >= total or stopped_early:
                    break
    finally:
        progress.close()
    if best_state is not None:
        load_trainable_state(model, best_state)
    if held_rows:
        # Every rank evaluates the whole held-out set: the same numbers everywhere, so every rank makes the
        # same early-stopping decision and none waits forever in a collective.
        _evaluate(objective, model, held_rows, dist_info, on_metrics, step, history)
    return TrainResult(step, {**last, **(history[-1] if history else {})}, resumed_from, stopped_early, history)


def _evaluate(
    objective: Objective,
    model: Any,
    rows: Sequence[dict[str, Any]],
    dist_info: Distributed,
    on_metrics: Any,
    step: int,
    history: list[dict[str, float]],
) -> float:
    model.eval()
    with torch.no_grad():
        metrics = {f"eval_{k}": v for k, v in objective.evaluate(rows).items()}
    history.append({"step": float(step), **metrics})
    if dist_info.is_main and on_metrics is not None:
        on_metrics(metrics, step)
    return metrics.get("eval_score", 0.0)


def _save_checkpoint(
    path: Path,
    model: Any,
    extra: dict[str, torch.nn.Module],
    optimizer: Any,
    step: int,
    best_score: float,
    bad_evals: int,
    best_state: Any,
    history: list[dict[str, float]],
) -> None:
    """Written to a temporary file and renamed, so a kill mid-write leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "adapter": trainable_state(model),
            # Beside the adapter, not in best_state: the value head serves training only, the adapter is the model.
            "modules": {name: module.state_dict() for name, module in extra.items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_score": best_score,
            "bad_evals": bad_evals,
            "best_state": best_state,
            "history": history,
            "rng": torch.random.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)
    logger.info("checkpoint saved at step %d: %s", step, path)
