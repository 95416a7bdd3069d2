"""Per-token attribution of a reward model's score, by integrated gradients on the input embeddings.

:func:`attribute_reward` explains r(x, y) for one logged (prompt, response): how much of the score each token of
the text the encoder reads contributes, relative to a baseline text. The method is integrated gradients
(Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks"): the gradient of the score with
respect to each token's word embedding, averaged along the straight line from the baseline's embeddings to the
text's, times the difference between the two. Its *completeness* axiom says the attributions add up to
``score - baseline_score``; with a finite number of steps they do so up to a quadrature error, which is returned
(``delta``) so that a caller can see how far to trust them.

Captum (Meta's interpretability library for PyTorch) does the integration: ``LayerIntegratedGradients`` on the
encoder's word-embedding layer, with Gauss-Legendre quadrature. Only the word embeddings move along the path;
position and token-type embeddings (added after the word embeddings inside a BERT-like encoder) and the attention
mask stay those of the text, so the attribution is about *which tokens* are there, not where they are or how many.

The text is the one :meth:`trainers.reward.RewardModel.score` reads (``render`` of the prompt's messages and the
response, tokenised with the same truncation from the left and ``max_length``), through the same model, so
``score`` is the score the model gives. The model runs in fp32 here without the bf16 autocast used on CUDA for
scoring (gradients in bf16 break completeness), so on CUDA ``score`` may differ from the scored value in the
third decimal; on the CPU the two are the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from trainers.reward import RewardModel, prompt_messages, render

#: Gauss-Legendre nodes. Measured on all-MiniLM-L6-v2 with its LoRA and head (tests/integration/test_attribution.py,
#: docs/attribution.md): 32 steps kept the completeness gap well inside 5% of |score - baseline| on the texts tried,
#: where 8 did not on all of them; 64 costs twice as much for little more.
DEFAULT_STEPS = 32
#: Interpolated sequences per forward/backward pass (bounds memory on long texts; all steps at once when shorter).
DEFAULT_INTERNAL_BATCH = 32
#: Baselines: the token that replaces every non-special token of the text.
BASELINES = ("pad", "mask")


@dataclass(frozen=True)
class TokenAttribution:
    """One token as the encoder reads it: its text, where it lies, and its share of the score."""

    index: int
    token: str
    #: The token's characters in the rendered text (start, end); (0, 0) for special tokens.
    start: int
    end: int
    #: ``prompt`` (the rendered conversation before the response), ``response``, or ``special`` ([CLS], [SEP]).
    part: str
    attribution: float


@dataclass(frozen=True)
class Attribution:
    score: float
    baseline_score: float
    #: sum(attributions) - (score - baseline_score): integrated gradients' quadrature error.
    delta: float
    steps: int
    baseline: str
    #: The rendered text the encoder reads and where the response starts in it.
    text: str
    response_start: int
    tokens: list[TokenAttribution] = field(default_factory=list)
    #: Tokens dropped from the left by truncation to the model's max_length.
    truncated: bool = False

    @property
    def total(self) -> float:
        return sum(t.attribution for t in self.tokens)

    @property
    def relative_delta(self) -> float:
        """|delta| as a share of |score - baseline_score| (inf when the two scores are equal and delta is not)."""
        gap = abs(self.score - self.baseline_score)
        if gap == 0.0:
            return 0.0 if self.delta == 0.0 else float("inf")
        return abs(self.delta) / gap

    def top(self, k: int) -> list[TokenAttribution]:
        """The k tokens with the largest |attribution|, special tokens left out, largest first."""
        ranked = sorted((t for t in self.tokens if t.part != "special"), key=lambda t: -abs(t.attribution))
        return ranked[:k]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_delta": self.relative_delta}


def _unwrap(model: Any) -> Any:
    """The module under peft's wrapper (PeftModel -> LoraModel -> the backbone with its head)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base


def embedding_layer(model: Any) -> torch.nn.Module:
    """The word-embedding layer of a reward model (mean-pooled head or the architecture's own head)."""
    base = _unwrap(model)
    encoder = getattr(base, "encoder", None)
    if encoder is not None and hasattr(encoder, "get_input_embeddings"):
        layer = encoder.get_input_embeddings()
    else:
        layer = base.get_input_embeddings()
    if not isinstance(layer, torch.nn.Module):
        raise TypeError(f"{type(base).__name__} has no input embedding layer to attribute over")
    return layer


def _baseline_ids(input_ids: torch.Tensor, special: torch.Tensor, tokenizer: Any, baseline: str) -> torch.Tensor:
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    token_id = tokenizer.pad_token_id if baseline == "pad" else tokenizer.mask_token_id
    if token_id is None:
        raise ValueError(f"the tokenizer has no {baseline} token; choose another baseline")
    return torch.where(special, input_ids, torch.full_like(input_ids, token_id))


def attribute_reward(
    model: RewardModel,
    prompt: str | Sequence[dict[str, str]] | dict[str, Any],
    response: str,
    steps: int = DEFAULT_STEPS,
    baseline: str = "pad",
    internal_batch_size: int = DEFAULT_INTERNAL_BATCH,
) -> Attribution:
    """Integrated-gradients attribution of ``model``'s score for (``prompt``, ``response``) to each token.

    ``prompt`` is what :meth:`RewardModel.score` takes: a string, chat messages or a stored row.

    ``baseline`` is the text the path starts from: every token but the special ones ([CLS], [SEP]) replaced by
    ``pad`` (default) or ``mask``, the same length, the attention mask unchanged. [PAD] is the token that means
    "nothing here" to the encoder (it is what padding fills with, and the attention mask keeps it from ever being
    trained as content), so the attributions answer "what did these tokens add over an empty text of this shape";
    [MASK] is the alternative where a reader prefers "over unknown tokens" (BERT was pre-trained to read it as a
    hidden word, so its baseline score carries more of the prompt's shape). A zero vector is not offered: it is
    no embedding the encoder ever saw, and with LayerNorm right after the embeddings it is not a neutral input.
    Special tokens are kept so that the baseline is a well-formed input, and get attribution 0.
    """
    from captum.attr import LayerIntegratedGradients

    if steps < 1:
        raise ValueError("steps must be at least 1")
    rm = model
    text = render(prompt_messages(prompt), response)
    response_start = len(text) - len(response)
    tokenizer = rm.tokenizer
    untruncated = len(tokenizer(text, add_special_tokens=True)["input_ids"])
    encoded = tokenizer(
        [text],
        truncation=True,
        max_length=rm.max_length,
        return_tensors="pt",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    offsets = encoded.pop("offset_mapping")[0].tolist()
    special = encoded.pop("special_tokens_mask").bool()
    device = rm.runtime.device
    inputs = {k: v.to(device) for k, v in encoded.items()}
    input_ids = inputs.pop("input_ids")
    special = special.to(device)
    reference = _baseline_ids(input_ids, special, tokenizer, baseline)
    extra = tuple(inputs[k] for k in ("attention_mask", "token_type_ids") if k in inputs)
    names = tuple(k for k in ("attention_mask", "token_type_ids") if k in inputs)

    net = rm.model

    def forward(ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return net(input_ids=ids, **dict(zip(names, rest, strict=True))).logits.squeeze(-1).float()

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            both = forward(torch.cat([input_ids, reference]), *(torch.cat([t, t]) for t in extra))
        score, baseline_score = float(both[0]), float(both[1])
        lig = LayerIntegratedGradients(forward, embedding_layer(net))
        attributions = lig.attribute(
            inputs=input_ids,
            baselines=reference,
            additional_forward_args=extra,
            n_steps=steps,
            method="gausslegendre",
            internal_batch_size=internal_batch_size,
        )
    finally:
        net.train(was_training)
    per_token = attributions.sum(dim=-1)[0].detach().float().cpu().tolist()
    ids = input_ids[0].tolist()
    pieces = tokenizer.convert_ids_to_tokens(ids)
    flags = special[0].tolist()
    tokens = []
    for index, (piece, (start, end), is_special, value) in enumerate(
        zip(pieces, offsets, flags, per_token, strict=True)
    ):
        part = "special" if is_special else ("response" if start >= response_start else "prompt")
        tokens.append(TokenAttribution(index, piece, int(start), int(end), part, float(value)))
    total = sum(per_token)
    return Attribution(
        score=score,
        baseline_score=baseline_score,
        delta=total - (score - baseline_score),
        steps=steps,
        baseline=baseline,
        text=text,
        response_start=response_start,
        tokens=tokens,
        truncated=untruncated > len(ids),
    )


def mark_response(result: Attribution, k: int, left: str = "[", right: str = "]") -> str:
    """The response with its top-k tokens (by |attribution|, among the response's) bracketed, e.g. for a terminal."""
    top = {
        t.index
        for t in sorted((t for t in result.tokens if t.part == "response"), key=lambda t: -abs(t.attribution))[:k]
    }
    spans = sorted((t.start, t.end) for t in result.tokens if t.index in top)
    out, cursor = [], result.response_start
    for start, end in spans:
        out.append(result.text[cursor:start])
        out.append(f"{left}{result.text[start:end]}{right}")
        cursor = end
    out.append(result.text[cursor:])
    return "".join(out)
