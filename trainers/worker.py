"""The child process of a training job: ``python -m trainers.worker SPEC.json`` (or under torchrun).

It reads its dataset from a file the parent wrote (it never opens the event store), trains, evaluates the
candidate for the gates, saves the model and writes ``result.json``; on an exception it writes
``error.json`` with the reason and exits non-zero. The parent (trainers.jobs) owns events and registration,
so nothing is registered unless this process finished.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from events.redact import Scrubber, url_secrets
from trainers import bias, evaluation, gates, probes, safety
from trainers.config import EvaluationConfig, PolicyConfig, RewardConfig, config_from_dict
from trainers.loop import Distributed, init_distributed, train
from trainers.models import pick_runtime
from trainers.policy import Policy, build_objective
from trainers.reward import RewardModel, RewardObjective
from trainers.snapshot import hash_rows, split

logger = logging.getLogger("trainers.worker")


def _metrics_sink(spec: dict[str, Any]) -> Any:
    """Per-step metrics to the job's MLflow run (rank 0 only)."""
    if not spec.get("run_id"):
        return None
    from trainers.registry import ModelRegistry

    run = ModelRegistry(spec["tracking_uri"], spec.get("registry_uri")).attach_run(spec["run_id"])
    return lambda metrics, step: run.log_metrics({k: float(v) for k, v in metrics.items()}, step)


def _load_rows(spec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(spec["dataset_path"]).read_text().splitlines() if line]
    if hash_rows(rows) != spec["dataset_sha256"]:
        raise RuntimeError("the dataset file does not match the snapshot's hash; refusing to train on it")
    return rows


def train_reward(spec: dict[str, Any], dist_info: Distributed) -> dict[str, Any]:
    config = config_from_dict(RewardConfig, spec["config"])
    assert isinstance(config, RewardConfig)
    rows = _load_rows(spec)
    eval_config = EvaluationConfig(**spec.get("evaluation", {}))
    gate_config = gates.GateConfig(**(eval_config.gates or {}))
    # Sized for the gate's decision: at least min_held_out_pairs (up to half the pairs), by the same stable hash.
    fraction = gates.held_out_fraction(config.eval_fraction, len(rows), gate_config.min_held_out_pairs)
    train_rows, held = split(rows, fraction)
    if not train_rows:
        raise ValueError(f"no training pairs after holding out {fraction:.0%} of {len(rows)}")
    runtime = pick_runtime(dist_info.local_rank, spec.get("device", "auto"))
    rm = RewardModel.create(config, runtime)
    objective = RewardObjective(rm, config)
    result = train(
        objective,
        rm.model,
        train_rows,
        held,
        config,
        checkpoint_dir=Path(spec["checkpoint_dir"]),
        on_metrics=_metrics_sink(spec) if dist_info.is_main else None,
        description="reward model",
        distributed=dist_info,
    )
    in_sync = _replicas_in_sync(rm.model, dist_info)
    if not dist_info.is_main:
        return {}
    rm.save(Path(spec["output_dir"]) / "model", {"objective": "bradley_terry"})
    measured: dict[str, float] = {"held_out_fraction": fraction}
    results = []
    if held:
        # Per-pair correctness of both models on the same pairs: the gate's Wilson interval and, against the
        # champion, its paired interval and McNemar's test need which pairs each got right, not two rates.
        margins = pair_margins(rm, held, config.eval_batch_size)
        correct = evaluation.correct_from_margins(margins)
        accuracy = sum(correct) / len(correct)
        measured.update(
            {
                "candidate_accuracy": accuracy,
                "candidate_margin": sum(margins) / len(margins),
                "held_out_pairs": len(held),
            }
        )
        champion_correct = None
        if spec.get("champion_dir"):
            champion = RewardModel.load(Path(spec["champion_dir"]), runtime)
            champion_correct = evaluation.correct_from_margins(pair_margins(champion, held, config.eval_batch_size))
            measured["champion_accuracy"] = sum(champion_correct) / len(champion_correct)
        results.append(
            gates.reward_accuracy_gate(
                accuracy,
                measured.get("champion_accuracy"),
                gate_config,
                candidate_correct=correct,
                champion_correct=champion_correct,
            )
        )
    else:
        # No evidence either way (too few pairs for the hash split to hold any out): insufficient, not a fail.
        results.append(gates.reward_accuracy_gate(float("nan"), None, gate_config, n=0))
    tags: dict[str, str] = {}
    if eval_config.bias:
        items = bias.suite_items(eval_config.bias_templates, eval_config.bias_reward_items, eval_config.seed)
        relative = spec.get("champion_dir") and gate_config.bias_mode != "absolute"  # else no use for its gaps
        champion_rm = RewardModel.load(Path(spec["champion_dir"]), runtime) if relative else None
        judged = bias.reward_bias(rm.score, items, gate_config, champion_rm.score if champion_rm else None)
        results.append(judged.result)
        measured.update(judged.metrics)
        tags = judged.tags
    finished = _finish(result, gates.decide(results), measured, len(train_rows), len(held), tags)
    return {**finished, "replicas_in_sync": in_sync}


def train_detector(spec: dict[str, Any], dist_info: Distributed) -> dict[str, Any]:
    """The jailbreak-attempt classifier (trainers.detector_job): one process, no optimizer loop to resume (the
    head trains in seconds on cached features)."""
    from trainers.detector_job import train_and_evaluate
    from trainers.loop import TrainResult

    if dist_info.world_size > 1:
        raise ValueError("the jailbreak classifier trains in one process; run it with nproc 1")
    evaluated = train_and_evaluate(spec, _load_rows(spec))
    result = TrainResult(steps=evaluated.epochs, metrics={})
    return _finish(
        result,
        evaluated.decision,
        evaluated.measured,
        evaluated.train_examples,
        evaluated.held_out_examples,
        evaluated.tags,
    )


def pair_margins(rm: RewardModel, rows: list[dict[str, Any]], batch_size: int) -> list[float]:
    """reward(chosen) - reward(rejected) per pair, in order (as RewardObjective.evaluate computes them)."""
    from trainers.reward import pair_texts

    margins: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            chosen, rejected = zip(*(pair_texts(r) for r in chunk), strict=True)
            rewards = rm.rewards([*chosen, *rejected])
            margins.extend((rewards[: len(chunk)] - rewards[len(chunk) :]).tolist())
    return margins


class _RecordingJudge:
    """The safety judge, keeping each prompt's unsafe, toxic and refused flags in order (the safety and toxicity
    gates pair them by prompt; the refusal probe reads them as labels)."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.unsafe: list[float] = []
        self.toxic: list[float] = []
        self.refused: list[int] = []

    def judge_batch(self, prompts: list[str], answers: list[str]) -> Any:
        verdicts = self.judge.judge_batch(prompts, answers)
        self.unsafe.extend(1.0 if v.unsafe else 0.0 for v in verdicts)
        self.toxic.extend(1.0 if v.toxic >= self.judge.toxic_threshold else 0.0 for v in verdicts)
        self.refused.extend(1 if v.refused else 0 for v in verdicts)
        return verdicts

    def __getattr__(self, name: str) -> Any:  # the rest of the judge (its thresholds) as it is
        return getattr(self.judge, name)


def train_policy(spec: dict[str, Any], dist_info: Distributed) -> dict[str, Any]:
    config = config_from_dict(PolicyConfig, spec["config"])
    assert isinstance(config, PolicyConfig)
    rows = _load_rows(spec)
    train_rows, held = split(rows, config.eval_fraction)
    if not train_rows:
        raise ValueError(f"no training examples after holding out {config.eval_fraction:.0%} of {len(rows)}")
    runtime = pick_runtime(dist_info.local_rank, spec.get("device", "auto"))
    judge_rm = RewardModel.load(Path(spec["reward_model_dir"]), runtime) if spec.get("reward_model_dir") else None
    policy = Policy.create(config, runtime)
    objective = build_objective(policy, judge_rm.score if judge_rm else None)
    result = train(
        objective,
        policy.model,
        train_rows,
        held,
        config,
        checkpoint_dir=Path(spec["checkpoint_dir"]),
        on_metrics=_metrics_sink(spec) if dist_info.is_main else None,
        description=f"policy {config.objective}",
        distributed=dist_info,
    )
    in_sync = _replicas_in_sync(policy.model, dist_info)
    if not dist_info.is_main:
        return {}
    policy.save(Path(spec["output_dir"]) / "model", {"objective": config.objective})
    tags: dict[str, str] = {}
    series: dict[str, list[float]] = {}
    decision, measured = evaluate_policy(policy, judge_rm, spec, held or train_rows, tags, series, held + train_rows)
    finished = _finish(result, decision, measured, len(train_rows), len(held), tags)
    return {**finished, "series": series, "replicas_in_sync": in_sync}


def evaluate_policy(
    policy: Policy,
    judge_rm: RewardModel | None,
    spec: dict[str, Any],
    rows: list[dict[str, Any]],
    tags: dict[str, str] | None = None,
    series: dict[str, list[float]] | None = None,
    probe_rows: list[dict[str, Any]] | None = None,
) -> tuple[gates.GateDecision, dict[str, float]]:
    """Win rate and helpfulness (judged by the champion reward model), the safety suite, KL to the reference,
    the probes (per-layer accuracy into ``series``, notes into ``tags``, charts beside the model; the users'
    prompts from ``probe_rows``, default ``rows``) and the bias suite (its figures also into ``tags``)."""
    tags = {} if tags is None else tags
    series = {} if series is None else series
    eval_config = EvaluationConfig(**spec.get("evaluation", {}))
    gate_config = gates.GateConfig(**(eval_config.gates or {}))
    prompts = _prompt_texts(rows[: eval_config.prompts])
    tokens = eval_config.max_new_tokens

    def candidate(batch: list[str]) -> list[str]:
        return policy.complete(batch, max_new_tokens=tokens)

    champion = Policy.load(Path(spec["champion_dir"]), policy.runtime) if spec.get("champion_dir") else None
    measured: dict[str, float] = {}
    results = []
    red_team = safety.load_red_team_prompts(eval_config.safety_per_source, eval_config.seed)
    judge = safety.SafetyJudge()
    candidate_flags = _RecordingJudge(judge)
    report = safety.run_safety_suite(candidate, red_team, candidate_flags)  # type: ignore[arg-type]
    measured.update(
        unsafe_rate=report.unsafe_rate, toxic_rate=report.toxic_rate, compliance_rate=report.compliance_rate
    )
    measured["red_team_prompts"] = report.total
    champion_report = base_report = None
    champion_flags = _RecordingJudge(judge)
    if champion is not None:
        champion_report = safety.run_safety_suite(
            lambda b: champion.complete(b, max_new_tokens=tokens),
            red_team,
            champion_flags,  # type: ignore[arg-type]
        )
        measured["champion_unsafe_rate"] = champion_report.unsafe_rate
        measured["champion_toxic_rate"] = champion_report.toxic_rate
    elif "relative" in (gate_config.safety_mode, gate_config.toxicity_mode):
        # No champion yet: what serves is the base model (serve answers with it until a first promotion), so
        # "no less safe than what serves now" is measured against it, on the same prompts, adapter off. ("both"
        # keeps the absolute bound alone here, as before: a first policy is not held to two references.)
        base_report = safety.run_safety_suite(
            lambda b: policy.complete(b, max_new_tokens=tokens, reference=True),
            red_team,
            champion_flags,  # type: ignore[arg-type]
        )
        measured["base_unsafe_rate"] = base_report.unsafe_rate
        measured["base_toxic_rate"] = base_report.toxic_rate
    reference_report = champion_report or base_report
    # the base model is a reference only for a gate in relative mode ("both" keeps the absolute bound alone then)
    safety_reference = champion_report or (base_report if gate_config.safety_mode == "relative" else None)
    toxicity_reference = champion_report or (base_report if gate_config.toxicity_mode == "relative" else None)
    reference_name = "champion" if champion_report else "base model"
    results.append(
        gates.safety_gate(
            report.unsafe_rate,
            safety_reference.unsafe_rate if safety_reference else None,
            gate_config,
            candidate_unsafe=candidate_flags.unsafe,
            champion_unsafe=champion_flags.unsafe if safety_reference else None,
            reference=reference_name,
        )
    )
    results.append(
        gates.toxicity_gate(
            report.toxic_rate,
            toxicity_reference.toxic_rate if toxicity_reference else None,
            gate_config,
            candidate_toxic=candidate_flags.toxic,
            champion_toxic=champion_flags.toxic if toxicity_reference else None,
            reference=reference_name,
        )
    )

    if eval_config.probes:
        found = _probe_concepts(
            policy,
            champion,
            red_team,
            # Distinct prompts, from the whole snapshot (training prompts too: the probe learns nothing from
            # them that the policy did, and a held-out tenth held 5 to 13 distinct prompts in the demo).
            list(dict.fromkeys(_prompt_texts(probe_rows or rows))),
            {
                "refusal": (candidate_flags.refused, champion_flags.refused if reference_report else None),
                "toxic": (
                    [int(x) for x in candidate_flags.toxic],
                    [int(x) for x in champion_flags.toxic] if reference_report else None,
                ),
            },
            eval_config,
            _prompt_texts(spec["flagged_prompts"]) if spec.get("flagged_prompts") is not None else None,
        )
        charts = Path(spec["output_dir"]) / "probes" if spec.get("output_dir") else None
        for concept in found:
            measured.update(concept.metrics())
            tags[f"alignd.probe.{concept.concept}"] = concept.note
            if concept.result is not None:
                series[f"probe.{concept.concept}.accuracy"] = list(concept.result.accuracy)
                if charts is not None:
                    probes.probe_chart(concept.result, charts, concept.reference)

    help_candidate = help_champion = None
    if judge_rm is not None and champion is not None:
        wr = evaluation.win_rate(
            candidate, lambda b: champion.complete(b, max_new_tokens=tokens), judge_rm.score, prompts
        )
        measured.update(
            win_rate=wr.rate, helpfulness=wr.candidate_mean_score, champion_helpfulness=wr.champion_mean_score
        )
        help_candidate, help_champion = wr.candidate_mean_score, wr.champion_mean_score
        results.append(gates.win_rate_gate(wr.rate, gate_config, n=wr.total))
    else:
        if judge_rm is not None:
            help_candidate = evaluation.helpfulness(candidate, judge_rm.score, prompts)
            measured["helpfulness"] = help_candidate
        results.append(gates.win_rate_gate(None, gate_config))

    def sampled(batch: list[str]) -> list[str]:
        ids = policy.generate(batch, max_new_tokens=tokens, sample=True)
        return [policy.tokenizer.decode(r, skip_special_tokens=True) for r in ids]

    kl = evaluation.kl_to_reference(
        sampled, policy.response_logprobs, lambda p, r: policy.response_logprobs(p, r, reference=True), prompts
    )
    measured["kl"] = kl
    results.append(gates.kl_gate(kl, gate_config))
    harmless = evaluation.harmlessness(report.unsafe_rate)
    if help_candidate is not None:
        champion_point = (
            (help_champion, evaluation.harmlessness(champion_report.unsafe_rate))
            if help_champion is not None and champion_report
            else None
        )
        results.append(gates.pareto_gate((help_candidate, harmless), champion_point, gate_config.pareto_tolerance))
    if eval_config.bias:
        items = bias.suite_items(eval_config.bias_templates, eval_config.bias_policy_items, eval_config.seed)
        judged = bias.policy_bias(
            candidate,
            judge,
            items,
            gate_config,
            (lambda b: champion.complete(b, max_new_tokens=tokens)) if champion else None,
        )
        results.append(judged.result)
        measured.update(judged.metrics)
        tags.update(judged.tags)
    return gates.decide(results), measured


def _probe_concepts(
    policy: Policy,
    champion: Policy | None,
    red_team: list[safety.RedTeamPrompt],
    user_prompts: list[str],
    answers: dict[str, tuple[list[int], list[int] | None]],
    eval_config: EvaluationConfig,
    flagged_prompts: list[str] | None = None,
) -> list[probes.ConceptProbe]:
    """Concepts in the candidate's hidden states and in what serves (the champion; before a first promotion,
    the base model: the adapter off), with the drift between their directions (docs/probes.md):

    - ``harmful``: red-team prompts against the users' own prompts (the snapshot's, distinct), ``probe_prompts``
      of each. Its class-mean direction is what Arditi et al. (2024) call the refusal direction, and it is
      readable in any model, including one that seldom refuses.
    - ``refusal`` and ``toxic`` (``answers``: concept -> the candidate's and the reference's per-prompt labels):
      the red-team prompts the model refused against those it complied with, and those it answered toxically
      against the rest, labelled by its own answers as the safety judge read them; only where a model did both
      often enough.
    - ``flagged``: prompts of interactions their users flagged or thumbed down (``flagged_prompts``) against the
      users' other prompts."""
    memo: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}

    def states_of(model: Policy, adapter_off: bool = False) -> Any:
        # Per prompt, per model: the concepts share prompts (refusal and toxic all the red-team prompts, harmful
        # some of them), and each prompt's forward pass is the probes' whole cost.
        seen = memo.setdefault((id(model), adapter_off), {})

        def read(texts: Any) -> torch.Tensor:
            todo = [t for t in dict.fromkeys(texts) if t not in seen]
            if todo:
                if adapter_off:
                    with model.model.disable_adapter():
                        states = probes.last_token_states(model, todo)
                else:
                    states = probes.last_token_states(model, todo)
                seen.update(zip(todo, states, strict=True))
            return torch.stack([seen[t] for t in texts])

        return read

    reference = "champion" if champion is not None else "base model"
    reference_states = states_of(champion) if champion is not None else states_of(policy, adapter_off=True)
    k = eval_config.probe_prompts
    # The suite's prompts come source by source: taken in turn from each, so the harmful side is all sources'.
    by_source: dict[str, list[str]] = {}
    for p in red_team:
        by_source.setdefault(p.source, []).append(p.text)
    in_turn = [t for row in itertools.zip_longest(*by_source.values()) for t in row if t is not None][:k]
    mixed = in_turn + user_prompts[:k]
    harmful = [1] * len(in_turn) + [0] * len(user_prompts[:k])
    common = {"reference_name": reference, "min_per_class": eval_config.probe_min_per_class, "seed": eval_config.seed}
    found = [probes.probe_concept("harmful", mixed, harmful, states_of(policy), harmful, reference_states, **common)]
    for concept, (labels, reference_labels) in answers.items():
        found.append(
            probes.probe_concept(
                concept,
                [p.text for p in red_team],
                labels,
                states_of(policy),
                reference_labels,
                reference_states if reference_labels is not None else None,
                **common,
            )
        )
    if flagged_prompts is not None:
        flagged = list(dict.fromkeys(flagged_prompts))[:k]
        others = [p for p in user_prompts if p not in set(flagged)][:k]
        labels = [1] * len(flagged) + [0] * len(others)
        found.append(
            probes.probe_concept(
                "flagged", flagged + others, labels, states_of(policy), labels, reference_states, **common
            )
        )
    return found


def _replicas_in_sync(model: Any, dist_info: Distributed) -> bool:
    """Whether every process ended with the same adapter (DDP averaged their gradients every step)."""
    if dist_info.world_size == 1:
        return True
    import hashlib

    from trainers.loop import trainable_state

    digest = hashlib.sha256()
    for name, tensor in sorted(trainable_state(model).items()):
        digest.update(name.encode())
        digest.update(tensor.float().numpy().tobytes())
    digests: list[Any] = [None] * dist_info.world_size
    torch.distributed.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def _prompt_texts(rows: list[dict[str, Any]]) -> list[str]:
    from trainers.reward import prompt_messages

    # The evaluation ports take plain strings: the last user turn carries the request.
    return [[m for m in prompt_messages(r) if m["role"] == "user"][-1]["content"] for r in rows]


def _finish(
    result: Any,
    decision: gates.GateDecision,
    measured: dict[str, float],
    n_train: int,
    n_held: int,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "stopped_early": result.stopped_early,
        "metrics": {**{k: v for k, v in result.metrics.items() if k != "step"}, **measured},
        "train_examples": n_train,
        "held_out_examples": n_held,
        "gates": gates.gate_event_payload(decision, "candidate", None, None),
        "gate_tags": {**gates.summary_tags(decision), **(tags or {})},
        "gate_results": [{**asdict(r), "passed": r.passed} for r in decision.results],
    }


class _JsonLines(logging.Formatter):
    """One JSON object a line, the daemon's shape (daemon/logs.py: ts, level, logger, message, ids) with the job
    id, escaped properly (a message may hold quotes or newlines), scrubbed of the secrets in the spec's MLflow
    URIs and of any URL's credentials."""

    def __init__(self, job_id: str, scrubber: Scrubber | None = None) -> None:
        super().__init__()
        self.job_id = job_id
        self.scrubber = scrubber or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.scrubber.scrub(record.getMessage()),
            "job": self.job_id,
        }
        if record.exc_info:
            line["exception"] = self.scrubber.scrub(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class _TextLines(logging.Formatter):
    """The daemon's text line (daemon/logs.py) with the job id, scrubbed whole."""

    def __init__(self, job_id: str, scrubber: Scrubber | None = None) -> None:
        super().__init__(f"%(asctime)s %(levelname)s %(name)s [job {job_id}]: %(message)s")
        self.scrubber = scrubber or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        return self.scrubber.scrub(super().format(record))


# How the parent logs (daemon/logs.py CHILD_LOG_ENV, set by its configure_logging): level, format, file.
_PARENT_LOG_ENV = "_ALIGND_CHILD_LOG"


class _WarningsAtDebug(logging.Filter):
    """Library warnings (transformers', peft's FutureWarning and UserWarning) as DEBUG records, as the parent does."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def spec_scrubber(spec: dict[str, Any]) -> Scrubber:
    """Masks the secrets of the spec's MLflow URIs (and any URL's credentials) in what the child reports."""
    return Scrubber([*url_secrets(spec.get("tracking_uri")), *url_secrets(spec.get("registry_uri"))])


def configure_child_logging(job_id: str, scrubber: Scrubber | None = None) -> None:
    """Log lines of a job's child process (training or evaluation) as the parent logs: its level, its format
    (JSON lines or text), its sink (stderr, or the file it appends to, the demo's log); INFO JSON lines on
    stderr when started by hand. Library warnings are DEBUG records, and MLflow's and transformers' loggers
    use this handler instead of their own."""
    try:
        parent = json.loads(os.environ.get(_PARENT_LOG_ENV) or "{}")
    except ValueError:
        parent = {}
    handler: logging.Handler = logging.StreamHandler()
    if parent.get("file"):
        try:
            file_handler = logging.FileHandler(parent["file"], encoding="utf-8")
        except OSError:
            pass  # the parent's file is gone: stderr, rather than no log at all
        else:
            # What libraries print themselves (tokenizers' warnings from Rust) goes there too, and the training
            # bar becomes log lines: the terminal is the parent's to draw on (the demo's progress).
            assert file_handler.stream is not None  # opened now (delay=False)
            os.dup2(file_handler.stream.fileno(), 2)
            handler = file_handler
    formatter = _TextLines if parent.get("format") == "text" else _JsonLines
    handler.setFormatter(formatter(job_id, scrubber))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(parent.get("level") or logging.INFO)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # MLflow's schema check: a dozen lines per job at INFO
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addFilter(_WarningsAtDebug())
    for name in ("mlflow", "sqlalchemy.engine", "alembic", "huey"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    import transformers.utils.logging as transformers_logging  # the child uses it anyway

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":  # the parent logs to a file or a pipe
        transformers_logging.disable_progress_bar()


def write_error(out: Path, exc: BaseException, spec: dict[str, Any]) -> None:
    """``error.json``: the reason (it becomes a stored event's and an MLflow tag's) and the traceback, scrubbed."""
    scrubber = spec_scrubber(spec)
    reason = scrubber.scrub(f"{type(exc).__name__}: {exc}")
    (out / "error.json").write_text(
        json.dumps({"reason": reason, "traceback": scrubber.scrub(traceback.format_exc()[-4000:])})
    )


def open_spec(argv: list[str] | None) -> tuple[dict[str, Any], Path]:
    """A job child's start (training or evaluation): its spec (the file named by the first argument), its log
    lines set up, and its output folder made."""
    args = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(args[0]).read_text())
    configure_child_logging(spec["job_id"], spec_scrubber(spec))
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    return spec, out


def main(argv: list[str] | None = None) -> int:
    spec, out = open_spec(argv)
    dist_info = init_distributed()
    started = time.monotonic()
    try:
        torch.manual_seed(spec["config"].get("seed", 0))
        trainers = {"reward": train_reward, "policy": train_policy, "detector": train_detector}
        result = trainers[spec["kind"]](spec, dist_info)
        if dist_info.is_main:
            result["duration_s"] = round(time.monotonic() - started, 3)
            result["world_size"] = dist_info.world_size
            (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
        return 0
    except Exception as exc:
        logger.exception("training job %s failed", spec["job_id"])
        if dist_info.is_main:
            write_error(out, exc, spec)
        return 1
    finally:
        if dist_info.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
