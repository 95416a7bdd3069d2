"""Poisoned preference feedback, end to end: through Kafka into the store, the monitors' defences, and what the
reward model learns with and without them.

    python -m bench.poisoning_bench                         # the whole run (docs/poisoning.md), ~1 h on 2 cores
    python -m bench.poisoning_bench --phase stream          # only produce, ingest and detect (minutes)

Data: the HH-RLHF harmless-base pairs of ``../shared/data/hh-rlhf/`` split as ``bench.reward_bench`` does (first
half trains, second half is held out), each dialogue as an ``interaction.logged`` (its turns before the last as
``messages``) and a ``preference`` feedback naming the two last assistant turns. Pairs whose dialogues differ
before the last turn cannot be stated that way and are left out (both halves).

Users (deterministic from ``--seed``): ``--honest-users`` honest users label the training half by HH's labels,
their activity Zipf-like, plus ``--heavy-users`` honest heavy users holding ``--heavy-share`` of the pairs each.
The first ``--history`` pairs are history: the champion reward model is trained on them (the trainer library,
on the store's pairs up to that ``seq``) before the rest arrives. Into the rest go three campaigns, each from
its own accounts, every one of their pairs flipped (chosen and rejected swapped):

* ``flood``: ``--flood-accounts`` accounts send ``--flood-share`` of the pairs in a burst (consecutive);
* ``quiet``: ``--quiet-accounts`` accounts send ``--quiet-share`` spread through the stream, at honest rates;
* ``topic``: ``--topic-accounts`` accounts relabel, flipped, pairs of one topic (dialogues whose first human turn
  is about stealing, drugs, killing or weapons), as many as ``--topic-share`` of the training pairs, copies of
  the topic's training pairs (the same prompt and responses other users labelled), spread through the stream.

Defences: the monitor runner over the store (from the end of the history on), with ``feedback_flooding`` and
``contributor_agreement`` (scoring with the champion) and the default enforcement rules; the quarantine
projection then folds the requests. Measured: for each campaign account, the feedback events from the
campaign's first event until its quarantine (detection delay); honest users quarantined (false quarantines).

Reward models (``trainers.reward`` + ``trainers.loop``, ``RewardConfig`` defaults except ``--max-length`` and
``--epochs``): clean (the store's pairs from honest users only), poisoned undefended (every stored pair) and
poisoned defended (``training_pairs()``: the quarantine left out), each scored on the held-out half and on the
topic's held-out pairs. Writes ``bench/results/poisoning.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
TOPIC = re.compile(
    r"\b(steal|stole|rob|robb|theft|shoplift|burglar|drug|cocaine|meth\b|heroin|kill|murder|gun|bomb|weapon)"
)
FEEDBACK_TOPIC, INTERACTIONS_TOPIC = "alignd.feedback", "alignd.interactions"


# --- the stream ------------------------------------------------------------------------------------------


def hh_rows(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training half, held-out half) as stored preference rows ({id, prompt_kind, prompt, chosen, rejected,
    topic}); the rows whose two dialogues differ before their last turn are left out."""
    from bench.dpo_bench import dpo_row
    from bench.reward_bench import load_hh, split_half

    halves = []
    for name, half in zip(("train", "held"), split_half(load_hh(path)), strict=True):
        rows = []
        for i, pair in enumerate(half):
            row = dpo_row(pair, i)
            if row is None:
                continue
            row["id"] = f"{name}-{i}"
            first_human = json.loads(row["prompt"])[0]["content"].lower()
            row["topic"] = bool(TOPIC.search(first_human))
            rows.append(row)
        halves.append(rows)
    return halves[0], halves[1]


def build_stream(train: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The labelled pairs in arrival order: {row, user, role, flipped}; role is honest, heavy or a campaign."""
    rng = random.Random(args.seed)
    history, rest = train[: args.history], train[args.history :]
    n = len(train)
    honest = [f"user-{i:03d}" for i in range(args.honest_users)]
    heavy = [f"heavy-{i}" for i in range(args.heavy_users)]
    weights = [1 / (i + 1) ** 0.8 for i in range(len(honest))]  # Zipf-like: a few busy, a long tail

    def honest_label(row: dict[str, Any]) -> dict[str, Any]:
        if heavy and rng.random() < args.heavy_share * len(heavy):
            return {"row": row, "user": rng.choice(heavy), "role": "heavy", "flipped": False}
        return {"row": row, "user": rng.choices(honest, weights)[0], "role": "honest", "flipped": False}

    stream = [honest_label(r) for r in history]
    body = [honest_label(r) for r in rest]

    def accounts(name: str, count: int) -> list[str]:
        return [f"{name}-{i}" for i in range(count)]

    def flipped(row: dict[str, Any], user: str, role: str) -> dict[str, Any]:
        return {"row": row, "user": user, "role": role, "flipped": True}

    # quiet: pairs of the training half taken from honest users, flipped, at random places
    quiet_n = round(args.quiet_share * n)
    quiet_users = accounts("quiet", args.quiet_accounts)
    for i in rng.sample(range(len(body)), quiet_n):
        body[i] = flipped(body[i]["row"], quiet_users[i % len(quiet_users)], "quiet")
    # topic: copies of the topic's training pairs, flipped, inserted at random places
    topic_rows = [r for r in train if r["topic"]]
    topic_users = accounts("topic", args.topic_accounts)
    topic_n = round(args.topic_share * n)
    for j in range(topic_n):
        row = topic_rows[j % len(topic_rows)]
        body.insert(rng.randrange(len(body) + 1), flipped(row, topic_users[j % len(topic_users)], "topic"))
    # flood: honest pairs' places in one burst, taken over by a few accounts
    flood_n = round(args.flood_share * n)
    flood_users = accounts("flood", args.flood_accounts)
    start = rng.randrange(len(body) // 4, len(body) // 2)
    candidates = [i for i in range(start, len(body)) if body[i]["role"] in ("honest", "heavy")][:flood_n]
    for j, i in enumerate(candidates):
        body[i] = flipped(body[i]["row"], flood_users[j % len(flood_users)], "flood")
    return stream + body


def messages_for(stream: list[dict[str, Any]]) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """(interactions, feedback) Kafka messages (key, value) in the contract's envelopes."""
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    interactions, feedback = [], []
    for i, item in enumerate(stream):
        row, user = item["row"], item["user"]
        chosen, rejected = (row["rejected"], row["chosen"]) if item["flipped"] else (row["chosen"], row["rejected"])
        request = f"req-{i:05d}"
        at = (t0 + timedelta(seconds=10 * i)).isoformat()
        inter = {
            "event_id": f"int-{i:05d}",
            "type": "interaction.logged",
            "occurred_at": at,
            "source": "poisoning-bench",
            "payload": {
                "request_id": request,
                "model": {"name": "assistant", "version": "1"},
                "messages": json.loads(row["prompt"]),
                "response": row["chosen"],
                "user": user,
            },
        }
        fb = {
            "event_id": f"fb-{i:05d}",
            "type": "feedback.received",
            "occurred_at": (t0 + timedelta(seconds=10 * i + 5)).isoformat(),
            "source": "poisoning-bench",
            "payload": {
                "request_id": request,
                "kind": "preference",
                "value": {"chosen": chosen, "rejected": rejected},
                "user": user,
            },
        }
        interactions.append((request.encode(), json.dumps(inter).encode()))
        feedback.append((request.encode(), json.dumps(fb).encode()))
    return interactions, feedback


def produce_interleaved(bootstrap: str, interactions: list, feedback: list) -> None:
    """Each interaction, then its feedback, one topic each; flushed at the end (acks=all)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=5)
    for inter, fb in zip(interactions, feedback, strict=True):
        producer.send(INTERACTIONS_TOPIC, key=inter[0], value=inter[1])
        producer.send(FEEDBACK_TOPIC, key=fb[0], value=fb[1])
    producer.flush()
    producer.close()


def cli(args: list[str], env: dict[str, str], timeout: float = 1800) -> str:
    child = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    child.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        env=child,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"alignd {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


# --- training (a child process per model, so memory goes back after each) --------------------------------


def train_and_score(rows_path: Path, held_path: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import logging
    import warnings

    import torch
    import transformers

    from bench.reward_bench import BACKBONE
    from trainers.config import RewardConfig
    from trainers.loop import train as train_loop
    from trainers.models import pick_runtime
    from trainers.reward import RewardModel, RewardObjective

    if args.threads:
        torch.set_num_threads(args.threads)
    # Not reward_bench.quiet_libraries: that one also quiets `datasets`, which only the TRL side needs.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("trainers").setLevel(logging.WARNING)
    rows = json.loads(rows_path.read_text())
    held = json.loads(held_path.read_text())
    config = RewardConfig(
        model=BACKBONE,
        max_length=args.max_length,
        epochs=args.epochs,
        seed=args.seed,
        eval_fraction=0.0,
        checkpoint_every=0,
    )
    runtime = pick_runtime(prefer="cpu")
    rm = RewardModel.create(config, runtime)
    started = time.perf_counter()
    train_loop(RewardObjective(rm, config), rm.model, rows, [], config, description=out.name)
    seconds = time.perf_counter() - started
    rm.model.eval()
    rm.save(out)
    with torch.no_grad():
        objective = RewardObjective(rm, config)
        overall = objective.evaluate(held)
        topic = objective.evaluate([r for r in held if r["topic"]])
    result = {
        "pairs": len(rows),
        "train_seconds": round(seconds, 1),
        "heldout_accuracy": overall["accuracy"],
        "heldout_pairs": int(overall["pairs"]),
        "topic_accuracy": topic["accuracy"],
        "topic_pairs": int(topic["pairs"]),
    }
    (out / "scores.json").write_text(json.dumps(result, indent=2))
    return result


def train_child(name: str, rows: list[dict[str, Any]], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"model-{name}"
    if (out / "scores.json").exists():
        return json.loads((out / "scores.json").read_text())
    if (out / "alignd_model.json").exists() and args.reuse_unscored:
        # Trained and saved, its held-out scoring cut short: the detector's model agreement on honest pairs says
        # how good it is.
        return {"pairs": len(rows), "heldout_accuracy": None, "note": "held-out scoring not run"}
    rows_path = work / f"rows-{name}.json"
    rows_path.write_text(
        json.dumps([{k: r[k] for k in ("id", "prompt_kind", "prompt", "chosen", "rejected")} for r in rows])
    )
    print(f"training {name} on {len(rows)} pairs ...", flush=True)
    command = [
        sys.executable, "-m", "bench.poisoning_bench", "--train-child", str(rows_path), str(work / "held.json"), str(out),
        "--max-length", str(args.max_length), "--epochs", str(args.epochs), "--seed", str(args.seed),
        "--threads", str(args.threads),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True)
    result = json.loads((out / "scores.json").read_text())
    print(f"  {name}: {result}", flush=True)
    return result


def embed(rows: list[dict[str, Any]], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Frozen MiniLM features of each text the reward model would read (``trainers.reward.pair_texts``, left
    truncation to ``--max-length``): the mean of its token states, cached by text in the work folder."""
    import hashlib

    import numpy as np
    import torch
    from transformers import AutoModel

    from bench.reward_bench import BACKBONE
    from trainers.models import load_tokenizer, resolve_reward_backbone
    from trainers.reward import pair_texts

    cache_path = work / f"embeddings-{args.max_length}.npz"
    cache: dict[str, Any] = dict(np.load(cache_path)) if cache_path.exists() else {}
    texts = {t for r in rows for t in pair_texts(r)}
    key = {t: hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts}
    todo = sorted(t for t in texts if key[t] not in cache)
    if todo:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"embedding {len(todo)} texts ...", flush=True)
        tokenizer = load_tokenizer(BACKBONE, kind="reward")
        tokenizer.truncation_side = "left"  # as RewardModel.encode: the last turns (the response) are kept
        model = AutoModel.from_pretrained(resolve_reward_backbone(BACKBONE)).eval()
        with torch.no_grad():
            for start in range(0, len(todo), 32):
                chunk = todo[start : start + 32]
                enc = tokenizer(chunk, truncation=True, max_length=args.max_length, padding=True, return_tensors="pt")
                states = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = ((states * mask).sum(1) / mask.sum(1)).numpy()
                cache.update((key[t], v) for t, v in zip(chunk, pooled, strict=True))
        np.savez(cache_path, **cache)
    return {t: cache[key[t]] for t in texts}


class LinearScorer:
    """The detector's champion when it is the linear reward model: w . feature(render(prompt, response))."""

    def __init__(self, weights: Any, features: dict[str, Any], work: Path, args: argparse.Namespace) -> None:
        self.weights, self.features, self.work, self.args = weights, features, work, args

    def score(self, prompts: list[Any], responses: list[str]) -> list[float]:
        from trainers.reward import prompt_messages, render

        texts = [render(prompt_messages(p), r) for p, r in zip(prompts, responses, strict=True)]
        missing = [t for t in texts if t not in self.features]
        if missing:  # not a text of the data set: embed it (cached with the rest)
            rows = [{"chosen_text": t, "rejected_text": t} for t in missing]
            self.features.update(embed(rows, self.work, self.args))
        return [float(self.features[t] @ self.weights) for t in texts]


def linear_champion(
    history: list[dict[str, Any]],
    everything: list[dict[str, Any]],
    held: list[dict[str, Any]],
    work: Path,
    args: argparse.Namespace,
) -> tuple[LinearScorer, dict[str, Any]]:
    """The linear reward model trained on the history, C chosen on a validation split carved from it; it keeps
    the features of ``everything`` it will be asked to score at hand."""
    result = linear_models({"champion": history}, held, work, args, validate_on="champion")
    features = embed(everything, work, args)
    return LinearScorer(result.pop("_weights")["champion"], features, work, args), {**result["champion"],
        "validation": result["linear_validation"]}  # fmt: skip


def linear_models(
    sets: dict[str, list[dict[str, Any]]],
    held: list[dict[str, Any]],
    work: Path,
    args: argparse.Namespace,
    validate_on: str = "clean",
) -> dict[str, Any]:
    """A Bradley-Terry reward model on frozen MiniLM features for each training set: logistic regression without
    intercept on feature(chosen) - feature(rejected). Its one setting, the L2 strength C, is chosen on a
    validation split carved (by a hash of the pair id) from the clean set, then used for all three."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from trainers.reward import pair_texts
    from trainers.snapshot import split

    features = embed([r for rows in sets.values() for r in rows] + held, work, args)

    def diffs(rows: list[dict[str, Any]]) -> Any:
        return np.array([features[c] - features[r] for c, r in (pair_texts(x) for x in rows)])

    def fit(rows: list[dict[str, Any]], c: float) -> Any:
        x = diffs(rows)
        model = LogisticRegression(C=c, fit_intercept=False, max_iter=2000)
        return model.fit(np.concatenate([x, -x]), np.array([1] * len(x) + [0] * len(x)))

    def accuracy(model: Any, rows: list[dict[str, Any]]) -> float:
        return float(np.mean(diffs(rows) @ model.coef_[0] > 0)) if rows else float("nan")

    train, validation = split(sets[validate_on], 0.2, salt="poisoning-bench")
    grid = {c: accuracy(fit(train, c), validation) for c in (0.01, 0.1, 1.0, 10.0, 100.0)}
    best = max(grid, key=lambda c: (grid[c], -c))
    print(f"validation accuracy by C ({len(validation)} clean pairs): {grid}; chosen C = {best}", flush=True)
    topic = [r for r in held if r["topic"]]
    out: dict[str, Any] = {"linear_validation": {"pairs": len(validation), "by_C": grid, "chosen_C": best}}
    out["_weights"] = {}
    for name, rows in sets.items():
        model = fit(rows, best)
        out["_weights"][name] = model.coef_[0]
        out[name] = {
            "pairs": len(rows),
            "heldout_accuracy": accuracy(model, held),
            "heldout_pairs": len(held),
            "topic_accuracy": accuracy(model, topic),
            "topic_pairs": len(topic),
        }
        print(f"  {name}: {out[name]}", flush=True)
    return out


def stored_pairs(store: Any, users: set[str] | None = None, *, defended: bool, upto: int | None = None) -> list[dict]:
    """The store's preference pairs (all of them, or those ``training_pairs()`` keeps), optionally by user."""
    from sqlalchemy import select

    from events.projections.quarantine import training_pairs
    from events.tables import proj_preference_pairs

    query = training_pairs() if defended else select(proj_preference_pairs).order_by(proj_preference_pairs.c.seq)
    with store.engine.connect() as conn:
        rows = [dict(r._asdict()) for r in conn.execute(query)]
    return [
        {"id": r["pair_id"], "prompt_kind": r["prompt_kind"], "prompt": r["prompt"], "chosen": r["chosen"],
         "rejected": r["rejected"], "user": r["user_id"], "seq": r["seq"]}
        for r in rows
        if (users is None or r["user_id"] in users) and (upto is None or r["seq"] <= upto)
    ]  # fmt: skip


# --- the run ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench.harness import create_topic, loadavg, start_services
    from events.sql_store import SqlEventStore

    if args.threads:  # on shared cores one thread per process: a second one waits on its preempted sibling
        torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    load_start = loadavg()
    train, held = hh_rows(args.data)
    (work / "held.json").write_text(json.dumps(held))
    stream = build_stream(train, args)
    roles = {item["user"]: item["role"] for item in stream}
    honest_users = {u for u, r in roles.items() if r in ("honest", "heavy")}
    counts = Counter(item["user"] for item in stream)
    db = work / "store.db"
    env = {"ALIGND_DATABASE_URL": f"sqlite:///{db}", "ALIGND_LOG_LEVEL": "WARNING"}
    if not db.exists():
        with tempfile.TemporaryDirectory(prefix="poisoning-bench-") as tmp:
            services = start_services(Path(tmp), postgres=False)
            try:
                for topic in (INTERACTIONS_TOPIC, FEEDBACK_TOPIC):
                    create_topic(services, topic, 1)
                env["ALIGND_KAFKA_BOOTSTRAP_SERVERS"] = services.bootstrap
                cli(["db", "upgrade"], env)
                interactions, feedback = messages_for(stream)
                t = time.perf_counter()
                produce_interleaved(services.bootstrap, interactions, feedback)
                print(f"produced {2 * len(stream)} messages in {time.perf_counter() - t:.1f} s", flush=True)
                cli(["ingest", "--until-idle", "10"], env)
            finally:
                services.close()
    store = SqlEventStore.from_url(env["ALIGND_DATABASE_URL"])
    pairs = stored_pairs(store, defended=False)
    print(f"stored {len(pairs)} preference pairs of {len(stream)} produced", flush=True)
    history_seq = pairs[args.history - 1]["seq"]
    if args.champion == "lora":
        champion = train_child("champion", pairs[: args.history], work, args)
        scorer: Any = None
    else:
        scorer, champion = linear_champion(pairs[: args.history], pairs + held, held, work, args)
    # The monitors write alerts and quarantines: they run on a copy of the ingested store, one per champion.
    detect_db = work / f"detect-{args.champion}-{args.monitor_from}-{args.min_population}.db"
    if not detect_db.exists():
        import sqlite3

        with sqlite3.connect(db) as src, sqlite3.connect(detect_db) as dst:
            src.backup(dst)
    detect_store = SqlEventStore.from_url(f"sqlite:///{detect_db}")
    detection = detect(detect_store, work, history_seq, stream, roles, args, scorer) if args.phase != "train" else {}
    models: dict[str, Any] = {"champion": champion}
    sets = {
        "clean": stored_pairs(store, honest_users, defended=False),
        "undefended": pairs,
        "defended": stored_pairs(detect_store, defended=True),
    }
    if args.phase != "stream" and args.models == "lora":
        models.update({name: train_child(name, rows, work, args) for name, rows in sets.items()})
    elif args.phase != "stream":
        trained = linear_models(sets, held, work, args)
        trained.pop("_weights")
        models.update(trained)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": load_start,
        "load_average_at_end": loadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {
            "train_pairs": len(train),
            "held_pairs": len(held),
            "topic_train_pairs": sum(r["topic"] for r in train),
            "topic_held_pairs": sum(r["topic"] for r in held),
            "stream_pairs": len(stream),
            "stored_pairs": len(pairs),
            "history_pairs": args.history,
            "by_role": dict(Counter(item["role"] for item in stream)),
            "honest_users": len(honest_users),
            "busiest_honest": sorted((counts[u] for u in honest_users), reverse=True)[:5],
        },
        "detection": detection,
        "models": models,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("detection", "models")}, indent=2))
    print(f"wrote {args.output}")
    return result


def detect(
    store: Any,
    work: Path,
    history_seq: int,
    stream: list[dict],
    roles: dict[str, str],
    args: argparse.Namespace,
    scorer: Any = None,
) -> dict[str, Any]:
    """Runs the monitors (from --monitor-from) with the champion; returns delays and false quarantines."""
    from events.names import ANOMALY_DETECTED, ENFORCEMENT_REQUESTED, FEEDBACK_RECEIVED, INTERACTION_LOGGED
    from events.projections.runner import ProjectionRunner
    from monitors.detectors.agreement import AgreementConfig, ContributorAgreementDetector
    from monitors.detectors.flooding import FeedbackFloodingDetector
    from monitors.runner import MonitorRunner
    from trainers.reward import RewardModel

    if not store.position("monitors").state:  # not started: from where --monitor-from says
        with store.unit_of_work(append_lock=False) as uow:  # from the start: the history's votes are peers too
            uow.save_position("monitors", history_seq if args.monitor_from == "history" else 0)
    inbound = (FEEDBACK_RECEIVED, INTERACTION_LOGGED)
    if store.read(store.position("monitors", with_state=False).seq, limit=1, types=inbound):  # not finished
        scorer = scorer or RewardModel.load(work / "model-champion")
        config = AgreementConfig(
            alpha=args.alpha, margin=args.margin, min_pairs=args.min_pairs, min_population=args.min_population
        )
        detectors = [FeedbackFloodingDetector(), ContributorAgreementDetector(scorer, config)]
        t = time.perf_counter()
        MonitorRunner(store, detectors).catch_up()
        print(f"monitors: {time.perf_counter() - t:.1f} s", flush=True)
        ProjectionRunner(store).catch_up()
    feedback = store.read(history_seq, limit=10**7, types=(FEEDBACK_RECEIVED,))
    by_user_first: dict[str, int] = {}
    for e in feedback:
        by_user_first.setdefault(e.event.payload.get("user"), e.seq)
    feedback_seqs = [e.seq for e in feedback]
    # The monitors ran after the whole stream was stored, so a request's own seq says nothing of when: its
    # alert's trigger_seq (the feedback that made it fire) does.
    triggers = {
        a.event.event_id: a.event.payload["trigger_seq"] for a in store.read(0, limit=10**7, types=(ANOMALY_DETECTED,))
    }
    requests = store.read(0, limit=10**7, types=(ENFORCEMENT_REQUESTED,))
    quarantined: dict[str, dict[str, Any]] = {}
    for r in requests:
        p = r.event.payload
        user = (p.get("target") or {}).get("user")
        if p.get("action") == "quarantine_user" and user and user not in quarantined:
            quarantined[user] = {"seq": triggers.get(p.get("anomaly_id"), r.seq), "detector": p.get("detector")}

    def events_between(a: int, b: int) -> int:
        return sum(1 for s in feedback_seqs if a <= s <= b)

    campaigns: dict[str, Any] = {}
    for role in ("flood", "quiet", "topic"):
        users = sorted(u for u, r in roles.items() if r == role)
        if not users:
            continue
        start = min(by_user_first.get(u, 10**12) for u in users)
        caught = {u: quarantined[u] for u in users if u in quarantined}
        campaigns[role] = {
            "accounts": len(users),
            "pairs": sum(1 for i in stream if i["role"] == role),
            "quarantined": len(caught),
            "by": sorted({c["detector"] for c in caught.values()}),
            "delay_feedback_events": sorted(events_between(start, c["seq"]) for c in caught.values()),
            "campaign_pairs_before_quarantine": sorted(
                sum(1 for e in feedback if e.event.payload.get("user") == u and e.seq <= c["seq"])
                for u, c in caught.items()
            ),
        }
    false = sorted(u for u in quarantined if roles.get(u) in ("honest", "heavy"))
    return {
        "campaigns": campaigns,
        "false_quarantines": false,
        "honest_users": sum(1 for r in roles.values() if r in ("honest", "heavy")),
        "heavy_quarantined": [u for u in false if roles[u] == "heavy"],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.poisoning_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=RESULTS_DIR / "poisoning", help="store, models (reused if there)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "poisoning.json")
    p.add_argument("--phase", choices=("all", "stream", "train"), default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", type=int, default=400, help="pairs the champion is trained on, before the rest")
    p.add_argument("--honest-users", type=int, default=300)
    p.add_argument("--heavy-users", type=int, default=3)
    p.add_argument("--heavy-share", type=float, default=0.05, help="share of the pairs each heavy user labels")
    p.add_argument("--flood-accounts", type=int, default=2)
    p.add_argument("--flood-share", type=float, default=0.05)
    p.add_argument("--quiet-accounts", type=int, default=3)
    p.add_argument("--quiet-share", type=float, default=0.05)
    p.add_argument("--topic-accounts", type=int, default=4)
    p.add_argument("--topic-share", type=float, default=0.20)
    p.add_argument("--alpha", type=float, default=1e-4)
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--min-pairs", type=int, default=20)
    p.add_argument("--min-population", type=int, default=100)
    p.add_argument("--max-length", type=int, default=128, help="reward model tokens (128: half the default's cost)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--monitor-from",
        choices=("history", "start"),
        default="history",
        help="where the monitors start: after the history (the champion never scores its own training pairs) or at "
        "the first event (the history's votes count as peers; the champion scores the pairs it learnt from)",
    )
    p.add_argument("--reuse-unscored", action="store_true", help="use a saved model whose scoring was cut short")
    p.add_argument(
        "--champion",
        choices=("lora", "linear"),
        default="lora",
        help="the champion the agreement detector scores with: the trainer's LoRA reward model on the history, or "
        "the linear one (a fallback where training the LoRA one takes too long)",
    )
    p.add_argument(
        "--models",
        choices=("linear", "lora"),
        default="linear",
        help="clean / undefended / defended reward models: a linear head on frozen MiniLM features (minutes) or "
        "the trainer's LoRA reward model (hours on 2 shared cores); the champion is always the LoRA one",
    )
    p.add_argument("--train-child", nargs=3, type=Path, metavar=("ROWS", "HELD", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.train_child:
        return train_and_score(*args.train_child, args)
    return run(args)


if __name__ == "__main__":
    main()
