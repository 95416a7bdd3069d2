"""The policy: a causal LM with a LoRA adapter, and its objectives (SFT, DPO, RLOO, PPO, GRPO).

The reference model of DPO, RLOO, PPO and GRPO is the same network with the adapter disabled (peft's
``disable_adapter``), so no second copy of the weights is held. Prompts are rendered with the tokenizer's
chat template; losses count response tokens only. PPO and GRPO take several optimizer steps per rollout
(their epochs): they give the loop a generator of losses (``losses``), one per step, rather than one ``loss``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from trainers.config import PolicyConfig
from trainers.losses import (
    IGNORE_INDEX,
    LossOutput,
    dpo_loss,
    gae_advantages,
    group_advantages,
    grpo_loss,
    kl_penalised_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
    rloo_advantages,
    rloo_loss,
    sft_loss,
    token_logps,
    whiten,
)
from trainers.models import Runtime, disable_dropout, load_policy_model, load_tokenizer, pick_runtime, with_lora
from trainers.reward import prompt_messages
from trainers.value_head import ValueHead

logger = logging.getLogger(__name__)

MANIFEST = "alignd_model.json"
#: ``score(prompts, responses) -> rewards``: the reward model RLOO optimises (a port; tests pass any).
Scorer = Callable[[Sequence[Any], Sequence[str]], list[float]]


class Policy:
    def __init__(self, model: Any, tokenizer: Any, runtime: Runtime, config: PolicyConfig) -> None:
        self.model, self.tokenizer, self.runtime, self.config = model, tokenizer, runtime, config
        self.base_model = config.model

    @classmethod
    def create(cls, config: PolicyConfig, runtime: Runtime | None = None, adapter_dir: Path | None = None) -> Policy:
        """A fresh adapter on the base model, or (``adapter_dir``) continue from a registered one."""
        runtime = runtime or pick_runtime()
        torch.manual_seed(config.seed)
        base = load_policy_model(config.model, runtime)
        model = with_lora(base, config.lora, task="policy", adapter_dir=adapter_dir)
        if config.disable_dropout:
            disable_dropout(model)
        return cls(model, load_tokenizer(config.model, kind="policy"), runtime, config)

    @classmethod
    def load(cls, directory: Path, runtime: Runtime | None = None) -> Policy:
        from peft import PeftModel

        runtime = runtime or pick_runtime()
        manifest = json.loads((directory / MANIFEST).read_text())
        config = PolicyConfig(
            model=manifest["base_model"],
            max_length=manifest["max_length"],
            max_prompt_length=manifest["max_prompt_length"],
        )
        model = PeftModel.from_pretrained(load_policy_model(config.model, runtime), str(directory / "adapter"))
        model.eval()
        return cls(model, load_tokenizer(config.model, kind="policy"), runtime, config)

    def save(self, directory: Path, extra: dict[str, Any] | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory / "adapter"))
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        manifest = {
            "kind": "policy",
            "base_model": self.base_model,
            "max_length": self.config.max_length,
            "max_prompt_length": self.config.max_prompt_length,
            **(extra or {}),
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return directory

    # --- tokens -----------------------------------------------------------------------------------

    def prompt_ids(self, prompt: Any) -> list[int]:
        """The chat-templated prompt with the assistant turn opened, keeping its last tokens."""
        messages = prompt_messages(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.config.max_prompt_length :]

    def response_ids(self, response: str) -> list[int]:
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return ids[: self.config.max_length - self.config.max_prompt_length]

    def collate(self, sequences: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Right-padded input ids, attention mask, and labels that count only response tokens."""
        width = max(len(p) + len(r) for p, r in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (p, r) in enumerate(sequences):
            seq = p + r
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(r)
            mask[i, : len(seq)] = 1
        device = self.runtime.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}

    def logits(self, batch: dict[str, torch.Tensor], model: Any = None) -> torch.Tensor:
        with self.runtime.autocast:
            return (model or self.model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def logits_and_hidden(self, batch: dict[str, torch.Tensor], model: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the last layer's hidden states (after the final norm) of one forward pass."""
        with self.runtime.autocast:
            out = (model or self.model)(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
            )
        return out.logits, out.hidden_states[-1]

    def token_logps(
        self, batch: dict[str, torch.Tensor], model: Any = None, reference: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if reference:
            with torch.no_grad(), self.model.disable_adapter():
                return token_logps(self.logits(batch), batch["labels"])
        return token_logps(self.logits(batch, model), batch["labels"])

    @torch.no_grad()
    def response_logprobs(
        self, prompts: Sequence[Any], responses: Sequence[str], reference: bool = False
    ) -> list[list[float]]:
        """log p(token | prompt, earlier tokens) of each response's tokens, by the policy or the reference."""
        out: list[list[float]] = []
        for start in range(0, len(prompts), self.config.eval_batch_size):
            pairs = list(
                zip(
                    prompts[start : start + self.config.eval_batch_size],
                    responses[start : start + self.config.eval_batch_size],
                    strict=True,
                )
            )
            enc = self.collate([(self.prompt_ids(p), self.response_ids(r)) for p, r in pairs])
            logps, mask = self.token_logps(enc, reference=reference)
            out.extend(row[m].tolist() for row, m in zip(logps, mask, strict=True))
        return out

    # --- generation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Any],
        *,
        max_new_tokens: int | None = None,
        sample: bool = False,
        num_samples: int = 1,
        temperature: float = 1.0,
    ) -> list[list[int]]:
        """Response token ids (eos and padding stripped), ``num_samples`` per prompt, prompt-major."""
        was_training = self.model.training
        self.model.eval()
        prompt_ids = [self.prompt_ids(p) for p in prompts]
        width = max(len(p) for p in prompt_ids)
        pad = self.tokenizer.pad_token_id
        # Left padding: every prompt ends where generation starts.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=self.runtime.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=self.runtime.device)
        kwargs: dict[str, Any] = {"do_sample": sample, "num_return_sequences": num_samples}
        if sample:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        with self.runtime.autocast:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=self.tokenizer.eos_token_id,
                **kwargs,
            )
        self.model.train(was_training)
        responses = []
        for row in out[:, width:].tolist():
            tokens = []
            for t in row:
                if t == self.tokenizer.eos_token_id:
                    break
                tokens.append(t)
            responses.append(tokens)
        return responses

    def complete(
        self, prompts: Sequence[Any], *, max_new_tokens: int | None = None, reference: bool = False
    ) -> list[str]:
        """Greedy answers as text (evaluation, win rates, the safety suite, constitutional revision); by the
        reference (the base model, adapter off) when ``reference``."""
        if reference:
            with self.model.disable_adapter():
                ids = self.generate(prompts, max_new_tokens=max_new_tokens)
        else:
            ids = self.generate(prompts, max_new_tokens=max_new_tokens)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]


def _chunks(rows: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class SFTObjective:
    """Demonstrations (corrections, top-rated answers, constitutional revisions): next-token NLL."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.train_model = policy, policy.model

    def _batch(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.policy.collate([(self.policy.prompt_ids(r), self.policy.response_ids(r["response"])) for r in rows])

    def loss(self, batch: Sequence[dict[str, Any]]) -> LossOutput:
        enc = self._batch(batch)
        return sft_loss(self.policy.logits(enc, self.train_model), enc["labels"])

    def evaluate(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        total, tokens = 0.0, 0.0
        for chunk in _chunks(rows, self.policy.config.eval_batch_size):
            enc = self._batch(chunk)
            out = sft_loss(self.policy.logits(enc), enc["labels"])
            total += out.metrics["nll"] * out.metrics["tokens"]
            tokens += out.metrics["tokens"]
        nll = total / max(tokens, 1.0)
        return {"nll": nll, "score": -nll}


class DPOObjective:
    """Preference pairs; chosen and rejected in one forward pass, the reference with the adapter off."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.train_model = policy, policy.model
        self.beta = policy.config.beta

    def _batch(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        p = self.policy
        prompts = [p.prompt_ids(r) for r in rows]
        return p.collate(
            [(ids, p.response_ids(r["chosen"])) for ids, r in zip(prompts, rows, strict=True)]
            + [(ids, p.response_ids(r["rejected"])) for ids, r in zip(prompts, rows, strict=True)]
        )

    def _loss(self, rows: Sequence[dict[str, Any]], model: Any) -> LossOutput:
        enc = self._batch(rows)
        n = len(rows)
        policy_logps = self.policy.token_logps(enc, model)[0].sum(-1)
        reference_logps = self.policy.token_logps(enc, reference=True)[0].sum(-1)
        return dpo_loss(policy_logps[:n], policy_logps[n:], reference_logps[:n], reference_logps[n:], self.beta)

    def loss(self, batch: Sequence[dict[str, Any]]) -> LossOutput:
        return self._loss(batch, self.train_model)

    def evaluate(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        outs = [self._loss(chunk, None) for chunk in _chunks(rows, self.policy.config.eval_batch_size)]
        weights = [len(c) for c in _chunks(rows, self.policy.config.eval_batch_size)]
        n = max(sum(weights), 1)
        margin = sum(o.metrics["margin"] * w for o, w in zip(outs, weights, strict=True)) / n
        accuracy = sum(o.metrics["accuracy"] * w for o, w in zip(outs, weights, strict=True)) / n
        return {
            "margin": margin,
            "accuracy": accuracy,
            "loss": sum(o.loss.item() * w for o, w in zip(outs, weights, strict=True)) / n,
            "score": margin,
        }


class _SampledObjective:
    """What the objectives that learn from the policy's own scored samples share: rollouts and evaluation."""

    def __init__(self, policy: Policy, scorer: Scorer) -> None:
        self.policy, self.scorer, self.train_model = policy, scorer, policy.model
        self.config = policy.config

    def _rollout(
        self, rows: Sequence[dict[str, Any]], sample: bool, k: int = 1
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[Any]]:
        """``k`` completions per prompt (prompt-major), their rewards, and their tokens collated for scoring."""
        p = self.policy
        responses = p.generate(rows, sample=sample, num_samples=k, temperature=self.config.temperature)
        prompts = [r for r in rows for _ in range(k)]
        texts = [p.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        rewards = torch.tensor(self.scorer(prompts, texts), dtype=torch.float32, device=p.runtime.device)
        enc = p.collate(
            [(p.prompt_ids(q), r + [p.tokenizer.eos_token_id]) for q, r in zip(prompts, responses, strict=True)]
        )
        return enc, rewards, prompts

    @torch.no_grad()
    def evaluate(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Greedy answers' mean reward (the score) and per-token KL to the reference."""
        rewards: list[float] = []
        kl_sum, tokens = 0.0, 0.0
        for chunk in _chunks(rows, self.config.eval_batch_size):
            enc, r, _ = self._rollout(chunk, sample=False)
            pol, mask = self.policy.token_logps(enc)
            ref, _ = self.policy.token_logps(enc, reference=True)
            kl_sum += ((pol - ref) * mask).sum().item()
            tokens += mask.sum().item()
            rewards.extend(r.tolist())
        reward = sum(rewards) / max(1, len(rewards))
        return {"reward": reward, "kl": kl_sum / max(tokens, 1.0), "score": reward}


class RLOOObjective(_SampledObjective):
    """REINFORCE leave-one-out: k samples per prompt, scored by the reward model, KL-shaped rewards."""

    def loss(self, batch: Sequence[dict[str, Any]]) -> LossOutput:
        enc, rewards, _ = self._rollout(batch, sample=True, k=self.config.rloo_k)
        policy_tokens, mask = self.policy.token_logps(enc, self.train_model)
        reference_tokens, _ = self.policy.token_logps(enc, reference=True)
        policy_logps = policy_tokens.sum(-1)
        shaped = kl_penalised_rewards(rewards, policy_logps.detach(), reference_tokens.sum(-1), self.config.kl_coef)
        advantages = rloo_advantages(shaped.view(len(batch), self.config.rloo_k)).view(-1)
        out = rloo_loss(policy_logps, advantages)
        with torch.no_grad():
            kl = ((policy_tokens - reference_tokens) * mask).sum() / mask.sum().clamp(min=1)
        return LossOutput(out.loss, {**out.metrics, "reward": rewards.mean().item(), "kl": kl.item()})


class PPOObjective(_SampledObjective):
    """PPO as in the RLHF recipe: one sample per prompt, per-token KL-penalised reward, GAE from a value head on
    the policy, then ``ppo_epochs`` clipped updates of policy and value head on that rollout."""

    def __init__(self, policy: Policy, scorer: Scorer) -> None:
        super().__init__(policy, scorer)
        self.value_head = ValueHead(policy.model.config.hidden_size).to(policy.runtime.device)
        #: Trainable beside the adapter: the loop optimises and checkpoints these too.
        self.modules: dict[str, torch.nn.Module] = {"value_head": self.value_head}

    def _forward(self, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, hidden = self.policy.logits_and_hidden(enc, self.train_model)
        logps, mask = token_logps(logits, enc["labels"])
        # hidden[:, t] is the state from which token t + 1 is chosen, as logits[:, t] is: V(s_t) aligns with logps.
        values = self.value_head(hidden[:, :-1]) * mask
        return logps, values, mask

    def losses(self, batch: Sequence[dict[str, Any]]) -> Iterator[LossOutput]:
        c = self.config
        enc, scores, _ = self._rollout(batch, sample=True)
        reference, _ = self.policy.token_logps(enc, reference=True)
        for epoch in range(c.ppo_epochs):
            logps, values, mask = self._forward(enc)
            if epoch == 0:
                # The first pass is the sampling policy itself: its log-probabilities and values are the "old"
                # ones every epoch's ratio and value clipping refer to (no separate no-grad pass).
                old_logps, old_values = logps.detach(), values.detach()
                rewards = ppo_token_rewards(scores, old_logps, reference, mask, c.kl_coef)
                advantages, returns = gae_advantages(rewards, old_values, mask, c.gamma, c.lam)
                advantages = whiten(advantages, mask)
                kl = masked_mean(old_logps - reference, mask).item()
            policy_out = ppo_policy_loss(logps, old_logps, advantages, mask, c.clip_range)
            value_out = ppo_value_loss(values, old_values, returns, mask, c.value_clip_range)
            metrics = {
                **policy_out.metrics,
                **value_out.metrics,
                "policy_loss": policy_out.loss.item(),
                "value_loss": value_out.loss.item(),
                "reward": scores.mean().item(),
                "kl": kl,
            }
            yield LossOutput(policy_out.loss + c.vf_coef * value_out.loss, metrics)


class GRPOObjective(_SampledObjective):
    """GRPO: a group of G samples per prompt, advantages relative to the group (no critic), the clipped ratio
    objective with the k3 KL to the reference in the loss, ``grpo_iterations`` updates per rollout."""

    def losses(self, batch: Sequence[dict[str, Any]]) -> Iterator[LossOutput]:
        c, g = self.config, self.config.grpo_group_size
        enc, scores, _ = self._rollout(batch, sample=True, k=g)
        reference, _ = self.policy.token_logps(enc, reference=True)
        advantages = group_advantages(scores.view(len(batch), g)).view(-1)
        for iteration in range(c.grpo_iterations):
            logps, mask = self.policy.token_logps(enc, self.train_model)
            if iteration == 0:
                old_logps = logps.detach()  # the sampling policy (see PPOObjective.losses)
                kl = masked_mean(old_logps - reference, mask).item()
            out = grpo_loss(logps, old_logps, reference, advantages, mask, c.clip_range, c.kl_coef)
            yield LossOutput(out.loss, {**out.metrics, "reward": scores.mean().item(), "kl": kl})


#: The objectives that sample from the policy and score the samples with the reward model.
SAMPLED_OBJECTIVES: dict[str, type[_SampledObjective]] = {
    "rloo": RLOOObjective,
    "ppo": PPOObjective,
    "grpo": GRPOObjective,
}


def build_objective(policy: Policy, scorer: Scorer | None = None) -> Any:
    objective = policy.config.objective
    if objective == "sft":
        return SFTObjective(policy)
    if objective == "dpo":
        return DPOObjective(policy)
    if scorer is None:
        raise ValueError(
            f"{objective.upper()} needs a reward model to score samples (train one with `alignd train reward`)"
        )
    return SAMPLED_OBJECTIVES[objective](policy, scorer)
