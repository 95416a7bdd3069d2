"""Linear probes on the policy's hidden states, per layer, and the causal check of a probed direction (docs/probes.md).

A probe asks whether a concept (the policy refuses this prompt, or not) is linearly readable from the residual
stream at the prompt's last token, the position from which the first answer token is predicted. Per layer, a
logistic regression (torch, full-batch L-BFGS with a small L2 penalty: scikit-learn would do the same, but a
dozen lines of torch keep the dependency out of the training child) is fitted on a training split and scored on
a held-out one. A concept's **direction** at a layer is the unit difference of the two classes' mean states
(Arditi et al. 2024, "Refusal in language models is mediated by a single direction"): the probe's weights are
for accuracy, the mean difference for intervening, since it is not skewed by the covariance of the states.

The causal check (:func:`ablated`): forward hooks project the direction out of every decoder block's output,
so no block reads or writes along it; if the concept is mediated by that direction, the behaviour (the
refusal rate on the safety suite) changes. :func:`representation_drift` compares two models' directions.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def left_padded(policy: Any, rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of token rows padded on the left, so every row ends at the last position."""
    width = max(len(r) for r in rows)
    pad = policy.tokenizer.pad_token_id
    device = policy.runtime.device
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


@torch.no_grad()
def last_token_states(policy: Any, prompts: Sequence[Any], batch_size: int = 8) -> torch.Tensor:
    """(prompts, layers, hidden): each block's output at the last token of the chat-templated prompt (the
    assistant turn opened), in float32 on the CPU. Layer ``l`` is block ``l``'s output (0-based; the
    embeddings are left out)."""
    model = policy.model
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        # Left padding: the last position is every prompt's last token.
        input_ids, mask = left_padded(policy, [policy.prompt_ids(p) for p in prompts[start : start + batch_size]])
        with policy.runtime.autocast:
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        # hidden_states[0] is the embeddings; [1:] the blocks (the last with the final norm applied).
        rows.append(torch.stack([h[:, -1, :].float().cpu() for h in out.hidden_states[1:]], dim=1))
    model.train(was_training)
    return torch.cat(rows)


#: How SmolLM2 and most chat models open a refusal; the refusal score reads their probability (Arditi et al. 2024
#: score refusal by the first token's; a 135M model opens compliance with "I" too, hence the whole openings).
REFUSAL_OPENINGS = ("I'm sorry", "I cannot", "I can't")


@torch.no_grad()
def refusal_score(
    policy: Any, prompts: Sequence[Any], openings: Sequence[str] = REFUSAL_OPENINGS, batch_size: int = 16
) -> torch.Tensor:
    """(prompts,): log of the probability that the answer opens with one of ``openings`` (teacher-forced, summed
    over the openings). A continuous measure of the tendency to refuse, for the causal check: a refusal rate
    over greedy answers moves by whole answers, and a 135M model refuses about one red-team prompt in fifteen."""
    model = policy.model
    was_training = model.training
    model.eval()
    device = policy.runtime.device
    per_opening = []
    for opening in openings:
        target = policy.tokenizer(opening, add_special_tokens=False)["input_ids"]
        scores: list[torch.Tensor] = []
        for start in range(0, len(prompts), batch_size):
            rows = [policy.prompt_ids(p) + target for p in prompts[start : start + batch_size]]
            ids, mask = left_padded(policy, rows)
            with policy.runtime.autocast:
                logits = model(input_ids=ids, attention_mask=mask).logits
            # Left padding: the opening is every row's last len(target) tokens, each predicted one position earlier.
            logps = torch.log_softmax(logits[:, -len(target) - 1 : -1].float(), dim=-1)
            wanted = torch.tensor(target, device=device).expand(len(rows), -1).unsqueeze(-1)
            scores.append(logps.gather(-1, wanted).squeeze(-1).sum(-1).cpu())
        per_opening.append(torch.cat(scores))
    model.train(was_training)
    return torch.logsumexp(torch.stack(per_opening), dim=0)


def split_indices(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A stratified split (each class held out in the same share), seeded."""
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for cls in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == cls]
        rng.shuffle(idx)
        cut = max(1, round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.extend(idx[:cut])
        train.extend(idx[cut:])
    return sorted(train), sorted(test)


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, steps: int = 100) -> tuple[torch.Tensor, float]:
    """Logistic regression on standardised features: (weights in the original space, bias)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    weights = (w / std).detach()
    return weights, float(b.detach() - (mean * weights).sum())


@dataclass(frozen=True)
class ProbeResult:
    """One concept probed at every layer: held-out accuracy per layer and the class-mean direction per layer."""

    concept: str
    accuracy: tuple[float, ...]
    directions: torch.Tensor  # (layers, hidden), unit rows: mean(positive) - mean(negative)
    n_train: int
    n_test: int
    majority: float  # held-out accuracy of always answering the commoner class: the floor a probe must beat

    @property
    def best_layer(self) -> int:
        return max(range(len(self.accuracy)), key=lambda i: (self.accuracy[i], -i))


def probe_layers(
    states: torch.Tensor, labels: Sequence[int], concept: str, *, test_fraction: float = 0.3, seed: int = 0
) -> ProbeResult:
    """Fit and score a probe at each layer of ``states`` (examples, layers, hidden) for binary ``labels``."""
    if len(labels) != states.shape[0]:
        raise ValueError(f"{states.shape[0]} examples but {len(labels)} labels")
    if len(set(labels)) != 2:
        raise ValueError(f"probing {concept!r} needs examples of both classes, got {sorted(set(labels))}")
    train, test = split_indices(labels, test_fraction, seed)
    y = torch.tensor([float(v) for v in labels])
    accuracy = []
    directions = []
    for layer in range(states.shape[1]):
        x = states[:, layer, :]
        weights, bias = fit_probe(x[train], y[train])
        predicted = (x[test] @ weights + bias) > 0
        accuracy.append(float((predicted == y[test].bool()).float().mean()))
        diff = x[y == 1].mean(0) - x[y == 0].mean(0)
        directions.append(diff / diff.norm().clamp_min(1e-12))
    positives = sum(labels[i] for i in test)
    majority = max(positives, len(test) - positives) / len(test)
    result = ProbeResult(concept, tuple(accuracy), torch.stack(directions), len(train), len(test), majority)
    logger.info(
        "probe %s: best layer %d (held-out accuracy %.3f on %d; majority %.3f)",
        concept, result.best_layer, accuracy[result.best_layer], len(test), majority,
    )  # fmt: skip
    return result


def representation_drift(champion: ProbeResult, challenger: ProbeResult, layer: int | None = None) -> float:
    """Cosine between the two models' directions of one concept at ``layer`` (default: the champion's best).
    1: the concept is represented along the same direction; near 0: the challenger moved it elsewhere."""
    at = champion.best_layer if layer is None else layer
    a, b = champion.directions[at], challenger.directions[at]
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def decoder_blocks(model: Any) -> list[Any]:
    """The decoder blocks of a causal LM, under a peft wrapper or not (Llama-style ``model.layers``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = getattr(getattr(inner, "model", None), "layers", None)
    if blocks is None:
        raise ValueError(f"cannot find the decoder blocks of {type(inner).__name__} (expected .model.layers)")
    return list(blocks)


@contextmanager
def ablated(model: Any, direction: torch.Tensor, blocks: Sequence[int] | None = None) -> Iterator[None]:
    """Within the block, every chosen decoder block's output has ``direction`` projected out: h - (h . d) d."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    chosen = decoder_blocks(model)
    chosen = chosen if blocks is None else [chosen[i] for i in blocks]

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        d = unit.to(hidden.device, hidden.dtype)
        projected = hidden - (hidden @ d).unsqueeze(-1) * d
        return (projected, *output[1:]) if isinstance(output, tuple) else projected

    handles = [block.register_forward_hook(hook) for block in chosen]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def too_few(labels: Sequence[int], min_per_class: int) -> str | None:
    """Why ``labels`` cannot be probed (a class with fewer than ``min_per_class`` examples), or None."""
    positives = sum(1 for v in labels if v)
    negatives = len(labels) - positives
    if min(positives, negatives) >= max(min_per_class, 2):
        return None
    return f"{positives} positive and {negatives} negative of {len(labels)} (at least {min_per_class} of each needed)"


@dataclass(frozen=True)
class ConceptProbe:
    """A concept probed in a candidate and, where it could be, in a reference model (what serves: the champion,
    or the base model before a first promotion), with the drift between their directions and one line saying it."""

    concept: str
    result: ProbeResult | None
    reference: ProbeResult | None
    drift: float | None
    note: str

    def metrics(self) -> dict[str, float]:
        if self.result is None:
            return {}
        r, c = self.result, self.concept
        out = {
            f"probe.{c}.best_layer": float(r.best_layer),
            f"probe.{c}.best_accuracy": r.accuracy[r.best_layer],
            f"probe.{c}.majority": r.majority,
        }
        if self.drift is not None:
            out[f"probe.{c}.drift"] = self.drift
        return out


def probe_concept(
    concept: str,
    prompts: Sequence[Any],
    labels: Sequence[int],
    states_of: Callable[[Sequence[Any]], torch.Tensor],
    reference_labels: Sequence[int] | None = None,
    reference_states_of: Callable[[Sequence[Any]], torch.Tensor] | None = None,
    *,
    reference_name: str = "champion",
    min_per_class: int = 8,
    seed: int = 0,
) -> ConceptProbe:
    """Probe ``concept`` in the candidate (its states of ``prompts``, its own ``labels``) and in the reference
    (its states, its own labels), and the drift between the two directions at the reference's best layer. A
    model whose labels hold too few of a class is not probed, and the note says so."""
    why = too_few(labels, min_per_class)
    if why is not None:
        return ConceptProbe(concept, None, None, None, f"{concept} not probed: {why}")
    result = probe_layers(states_of(prompts), labels, concept, seed=seed)
    best = result.best_layer
    note = (
        f"{concept}: best layer {best}, held-out accuracy {result.accuracy[best]:.2f} "
        f"(majority {result.majority:.2f}, {result.n_test} prompts)"
    )
    if reference_labels is None or reference_states_of is None:
        return ConceptProbe(concept, result, None, None, note)
    why = too_few(reference_labels, min_per_class)
    if why is not None:
        return ConceptProbe(concept, result, None, None, f"{note}; no drift: the {reference_name} has {why}")
    reference = probe_layers(reference_states_of(prompts), reference_labels, concept, seed=seed)
    drift = representation_drift(reference, result)
    note += f"; drift to the {reference_name}'s direction: cosine {drift:.2f} at layer {reference.best_layer}"
    return ConceptProbe(concept, result, reference, drift, note)


def probe_chart(result: ProbeResult, chart_dir: Path, reference: ProbeResult | None = None) -> Path:
    """A PNG of the held-out accuracy by layer, with the majority floor (and the reference model's curve, when
    given: the champion's, or the base model's before a first promotion)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a training child
    import matplotlib.pyplot as plt

    chart_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(result.accuracy)), result.accuracy, marker="o", label="held-out accuracy")
    if reference is not None:
        ax.plot(range(len(reference.accuracy)), reference.accuracy, marker=".", alpha=0.6, label="reference model")
    ax.axhline(result.majority, linestyle="--", color="grey", label="majority class")
    ax.set(xlabel="layer (decoder block)", ylabel="accuracy", ylim=(0, 1.02), title=f"probe: {result.concept}")
    ax.legend(loc="lower right")
    path = chart_dir / f"probe-{result.concept}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def log_probes(run: Any, result: ProbeResult, chart_dir: Path, drift: float | None = None) -> Path:
    """Held-out accuracy per layer as the run's ``probe.<concept>.accuracy`` metric (step = layer), the
    representation drift as ``probe.<concept>.drift``, and a chart of the accuracy by layer as an artifact."""
    for layer, acc in enumerate(result.accuracy):
        run.log_metrics({f"probe.{result.concept}.accuracy": acc}, layer)
    if drift is not None and math.isfinite(drift):
        run.log_metrics({f"probe.{result.concept}.drift": drift}, result.best_layer)
    path = probe_chart(result, chart_dir)
    run.log_artifacts(chart_dir, "probes")
    return path
