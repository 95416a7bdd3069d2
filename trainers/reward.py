"""The reward model: an encoder with a scalar head and a LoRA adapter, trained with the Bradley–Terry loss.

It scores (prompt, response) for the trainers (RLOO, win rates, gates) and, wired by the daemon, for the
reward-drift monitors. What is saved is the adapter (with the head, which peft keeps as a module to
save), the tokenizer and a manifest naming the backbone, so a registered version loads back anywhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainers.config import RewardConfig
from trainers.losses import LOSSES, LossOutput
from trainers.models import Runtime, disable_dropout, load_reward_backbone, load_tokenizer, pick_runtime, with_lora
from trainers.snapshot import messages_of

logger = logging.getLogger(__name__)

MANIFEST = "alignd_model.json"
#: Sequences per forward pass on the CPU when the config leaves it open. Padding is computed for real there
#: (a batch padded to its longest dialogue was 45% padding on HH-RLHF at 256 tokens), while small matmuls still
#: run near full speed; on CUDA the whole batch goes in one pass, where parallelism matters more than padding.
CPU_SEQUENCES_PER_FORWARD = 4


def render(messages: Sequence[dict[str, str]], response: str) -> str:
    """A conversation as the encoder reads it; the response last, so left truncation keeps it."""
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*turns, f"Assistant: {response}"])


def prompt_messages(prompt: str | Sequence[dict[str, str]] | dict[str, Any]) -> list[dict[str, str]]:
    """A plain prompt, chat messages, or a stored row's (prompt_kind, prompt) as messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):
        return messages_of(prompt["prompt_kind"], prompt["prompt"])
    return [dict(m) for m in prompt]


def length_groups(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length, in groups of ``size``: each group pads only to its own longest.

    ``size`` 0 keeps every index in one group, in the given order (one forward pass, padded to the longest).
    """
    if size <= 0:
        return [list(range(len(lengths)))] if lengths else []
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + size] for start in range(0, len(order), size)]


class RewardModel:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        runtime: Runtime,
        max_length: int,
        base_model: str,
        pooling: str = "mean",
        sequences_per_forward: int | None = None,
    ) -> None:
        self.model, self.tokenizer, self.runtime = model, tokenizer, runtime
        self.max_length, self.base_model, self.pooling = max_length, base_model, pooling
        if sequences_per_forward is None:
            sequences_per_forward = CPU_SEQUENCES_PER_FORWARD if runtime.device.type == "cpu" else 0
        self.sequences_per_forward = sequences_per_forward
        # Long dialogues lose their oldest turns, not the response being judged.
        self.tokenizer.truncation_side = "left"

    @classmethod
    def create(cls, config: RewardConfig, runtime: Runtime | None = None) -> RewardModel:
        runtime = runtime or pick_runtime()
        torch.manual_seed(config.seed)
        backbone = load_reward_backbone(config.model, runtime, config.pooling)
        model = with_lora(backbone, config.lora, task="reward")
        if config.disable_dropout:
            disable_dropout(model)
        tokenizer = load_tokenizer(config.model, kind="reward")
        max_length = config.max_length
        # A backbone with fewer positions than the configured limit (BERT-likes have 512) would fail on a long text.
        positions = getattr(backbone.config, "max_position_embeddings", None)
        if positions and max_length > positions:
            logger.warning("reward max_length %d is beyond %s's %d positions; using %d", max_length, config.model,
                           positions, positions)  # fmt: skip
            max_length = positions
        return cls(model, tokenizer, runtime, max_length, config.model, config.pooling, config.sequences_per_forward)

    @classmethod
    def load(cls, directory: Path, runtime: Runtime | None = None) -> RewardModel:
        """A saved or registered version (the folder :meth:`save` wrote, e.g. downloaded from MLflow)."""
        from peft import PeftModel
        from transformers import AutoTokenizer

        runtime = runtime or pick_runtime()
        manifest = json.loads((directory / MANIFEST).read_text())
        # Versions saved before the mean-pooled head existed used the architecture's own head.
        pooling = manifest.get("pooling", "head")
        backbone = load_reward_backbone(manifest["base_model"], runtime, pooling)
        model = PeftModel.from_pretrained(backbone, str(directory / "adapter")).to(runtime.device)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        return cls(model, tokenizer, runtime, manifest["max_length"], manifest["base_model"], pooling)

    def save(self, directory: Path, extra: dict[str, Any] | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory / "adapter"))
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        manifest = {
            "kind": "reward",
            "base_model": self.base_model,
            "max_length": self.max_length,
            "pooling": self.pooling,
            **(extra or {}),
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return directory

    def rewards(self, texts: Sequence[str], model: Any = None) -> torch.Tensor:
        """r for each text, in order; differentiable. Texts go through in length-sorted groups
        (``sequences_per_forward``), so short dialogues are not padded to the longest of the batch."""
        if not texts:
            return torch.empty(0, device=self.runtime.device)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        groups = length_groups([len(ids) for ids in encoded["input_ids"]], self.sequences_per_forward)
        parts = []
        for group in groups:
            batch = self.tokenizer.pad({k: [v[i] for i in group] for k, v in encoded.items()}, return_tensors="pt")
            with self.runtime.autocast:
                logits = (model or self.model)(**{k: v.to(self.runtime.device) for k, v in batch.items()}).logits
            parts.append(logits.squeeze(-1).float())
        order = torch.tensor([i for group in groups for i in group], device=self.runtime.device)
        return torch.cat(parts)[torch.argsort(order)]

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """r(x, y) for each (prompt, response); prompts are strings, chat messages or stored rows."""
        was_training = self.model.training
        self.model.eval()
        texts = [render(prompt_messages(p), r) for p, r in zip(prompts, responses, strict=True)]
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            out.extend(self.rewards(texts[start : start + batch_size]).tolist())
        self.model.train(was_training)
        return out


def pair_texts(row: dict[str, Any]) -> tuple[str, str]:
    """(chosen, rejected) as the encoder reads them; rows may carry ready texts (``chosen_text``)."""
    if "chosen_text" in row:
        return row["chosen_text"], row["rejected_text"]
    messages = prompt_messages(row)
    return render(messages, row["chosen"]), render(messages, row["rejected"])


class RewardObjective:
    """Bradley–Terry on preference pairs; chosen and rejected go through one forward pass."""

    def __init__(self, reward_model: RewardModel, config: RewardConfig) -> None:
        self.rm = reward_model
        self.loss_fn = LOSSES[config.loss]
        self.eval_batch_size = config.eval_batch_size
        self.train_model: Any = reward_model.model

    def loss(self, batch: Sequence[dict[str, Any]]) -> LossOutput:
        chosen, rejected = zip(*(pair_texts(r) for r in batch), strict=True)
        rewards = self.rm.rewards([*chosen, *rejected], model=self.train_model)
        return self.loss_fn(rewards[: len(batch)], rewards[len(batch) :])

    def evaluate(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        margins: list[float] = []
        for start in range(0, len(rows), self.eval_batch_size):
            chunk = rows[start : start + self.eval_batch_size]
            chosen, rejected = zip(*(pair_texts(r) for r in chunk), strict=True)
            rewards = self.rm.rewards([*chosen, *rejected])
            margins.extend((rewards[: len(chunk)] - rewards[len(chunk) :]).tolist())
        accuracy = sum(m > 0 for m in margins) / max(1, len(margins))
        return {
            "accuracy": accuracy,
            "margin": sum(margins) / max(1, len(margins)),
            "score": accuracy,
            "pairs": float(len(margins)),
        }
