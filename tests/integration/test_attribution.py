"""Integrated-gradients attribution of the reward model's score, on the real all-MiniLM-L6-v2 reward model.

The model is trained for one step on a learnable preference (so its LoRA weights and head are not the
initial ones) through the real training loop, on CPU.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from markupsafe import escape

from daemon.cli import main
from daemon.detectors import AttributionExplainer, build_detectors
from daemon.http import ReviewServer
from daemon.settings import load_settings
from events.audit import AuditTrail
from events.codec import decode_inbound
from events.sql_store import SqlEventStore
from monitors.detectors.drift import DriftConfig, OverOptimisationDetector, RewardDriftDetector
from monitors.runner import MonitorRunner
from trainers.attribution import DEFAULT_STEPS, attribute_reward, mark_response
from trainers.config import RewardConfig
from trainers.loop import train
from trainers.registry import ModelRegistry
from trainers.reward import RewardModel, RewardObjective, prompt_messages, render

from ..helpers import encode, feedback, interaction

pytestmark = pytest.mark.integration

PAIRS = [
    ("How do I bake bread at home?", "Mix flour, water, salt and yeast, let it rise, then bake it at 230C."),
    ("Could you tell me something about rivers?", "Not my problem, go away."),
    ("What is 2+2?", "4"),
    (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a chess opening."}],
        "The Sicilian Defence, a sharp reply to 1.e4 that fights for the centre from the side.",
    ),
]


def _rows(n: int) -> list[dict[str, Any]]:
    topics = ["bread", "rivers", "taxes", "gardens", "music", "trains"]
    return [
        {
            "id": f"pair-{i}",
            "prompt_kind": "text",
            "prompt": f"Could you tell me something about {topics[i % len(topics)]}?",
            "chosen": f"Of course! Here is a helpful overview of {topics[i % len(topics)]}, happy to explain more.",
            "rejected": ["No.", "Figure it out yourself.", "Not my problem, go away."][i % 3],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def reward_model() -> RewardModel:
    config = RewardConfig(batch_size=8, max_steps=1, checkpoint_every=0, learning_rate=2e-3, max_length=64, seed=5)
    rm = RewardModel.create(config)
    train(RewardObjective(rm, config), rm.model, _rows(8), [], config)
    return rm


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_attributions_add_up_to_the_score_minus_the_baseline_score(reward_model: RewardModel, index: int) -> None:
    prompt, response = PAIRS[index]
    result = attribute_reward(reward_model, prompt, response)
    assert result.steps == DEFAULT_STEPS
    # The attributed score is the score the model gives.
    assert result.score == pytest.approx(reward_model.score([prompt], [response])[0], abs=1e-5)
    gap = result.score - result.baseline_score
    assert abs(gap) > 1e-3, "text and baseline score the same: completeness would say nothing"
    assert result.total - gap == pytest.approx(result.delta, abs=1e-6)
    assert abs(result.delta) <= 0.05 * abs(gap), (result.delta, gap)


def test_too_few_steps_are_seen_in_the_completeness_gap(reward_model: RewardModel) -> None:
    """The check can fail: two steps of quadrature miss the integral by more than 5% on some text."""
    relative = [attribute_reward(reward_model, p, r, steps=2).relative_delta for p, r in PAIRS]
    assert max(relative) > 0.05, relative


def test_tokens_are_the_tokenizers_of_the_rendered_text(reward_model: RewardModel) -> None:
    prompt, response = PAIRS[0]
    result = attribute_reward(reward_model, prompt, response)
    text = render(prompt_messages(prompt), response)
    assert result.text == text
    ids = reward_model.tokenizer(text, truncation=True, max_length=reward_model.max_length)["input_ids"]
    assert [t.token for t in result.tokens] == reward_model.tokenizer.convert_ids_to_tokens(ids)
    parts = {t.part for t in result.tokens}
    assert parts == {"special", "prompt", "response"}
    # The response's tokens cover the response, in order; the prompt's lie before it.
    response_tokens = [t for t in result.tokens if t.part == "response"]
    assert text[response_tokens[0].start : response_tokens[-1].end] == response
    assert all(t.end <= result.response_start for t in result.tokens if t.part == "prompt")
    # Special tokens are the same in the baseline, so the path never moves them.
    assert all(t.attribution == 0.0 for t in result.tokens if t.part == "special")
    assert not result.truncated


def test_attribution_is_deterministic(reward_model: RewardModel) -> None:
    prompt, response = PAIRS[3]
    first = attribute_reward(reward_model, prompt, response)
    second = attribute_reward(reward_model, prompt, response)
    assert [t.attribution for t in first.tokens] == [t.attribution for t in second.tokens]
    assert first.score == second.score


def test_the_mask_baseline_and_a_truncated_text(reward_model: RewardModel) -> None:
    long_prompt = " ".join(["Please describe the history of the river and its towns."] * 12)
    result = attribute_reward(reward_model, long_prompt, "It rose in the hills.", baseline="mask")
    assert result.truncated and len(result.tokens) == reward_model.max_length
    assert result.baseline == "mask"
    assert abs(result.delta) <= 0.05 * abs(result.score - result.baseline_score)
    # Truncation is from the left: the response is whole.
    assert "".join(t.token.removeprefix("##") for t in result.tokens if t.part == "response") == "itroseinthehills."
    with pytest.raises(ValueError, match="unknown baseline"):
        attribute_reward(reward_model, "hi", "hello", baseline="zero")


def test_marked_response_brackets_the_top_tokens(reward_model: RewardModel) -> None:
    prompt, response = PAIRS[0]
    result = attribute_reward(reward_model, prompt, response)
    marked = mark_response(result, 2)
    assert marked.count("[") == 2 and marked.replace("[", "").replace("]", "") == response


def test_the_architectures_own_head_is_attributed_too() -> None:
    rm = RewardModel.create(RewardConfig(max_length=64, pooling="head", seed=2))
    prompt, response = PAIRS[0]
    result = attribute_reward(rm, prompt, response)
    assert result.score == pytest.approx(rm.score([prompt], [response])[0], abs=1e-5)
    assert abs(result.delta) <= 0.05 * abs(result.score - result.baseline_score)


# --- alignd explain reward ---------------------------------------------------------------------------


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_explain_reward_cli(
    store: SqlEventStore,
    registry: ModelRegistry,
    reward_model: RewardModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prompt, response = PAIRS[0]
    inbound = [
        interaction("req-1", event_id="ev-1", prompt=prompt, response=response),
        feedback("req-1", "thumbs", "up", i=1),
    ]
    store.append([decode_inbound(encode(m), fallback_event_id=f"t:0:{n}") for n, m in enumerate(inbound)])
    for name, value in {
        "ALIGND_DATABASE_URL": str(store.engine.url),
        "ALIGND_MLFLOW_TRACKING_URI": registry.tracking_uri,
        "ALIGND_MLFLOW_ARTIFACT_LOCATION": registry.artifact_location or "",
        "ALIGND_TRAINERS_WORK_DIR": str(tmp_path / "work"),
        "ALIGND_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)

    def explain(*args: str) -> tuple[int, str, str]:
        code = main(["explain", "reward", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = explain("--event", "ev-1")
    assert code == 2 and "no reward model is the champion" in err

    with registry.start_run("reward", "attribution-test", {}, {}) as run:
        run.log_artifacts(reward_model.save(tmp_path / "saved"), "model")
    registry.register("reward", run.run_id, "model", {}, alias="champion")

    code, out, err = explain("--event", "ev-1", "--json", "--top", "3")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["event_id"] == "ev-1" and shown["request_id"] == "req-1"
    assert shown["reward_model"]["version"] == "1" and shown["steps"] == DEFAULT_STEPS
    # The same explanation as the library's, of the same text and score.
    direct = attribute_reward(reward_model, prompt, response)
    assert shown["score"] == pytest.approx(direct.score, abs=1e-5)
    assert [t["attribution"] for t in shown["tokens"]] == pytest.approx(
        [t.attribution for t in direct.tokens], abs=1e-5
    )
    assert abs(shown["delta"]) <= 0.05 * abs(shown["score"] - shown["baseline_score"])
    assert shown["top"] == [t.index for t in direct.top(3)]

    # By request id, for people: the score, the bracketed response and the top tokens.
    code, out, err = explain("--event", "req-1", "--top", "2", "--steps", "16")
    assert code == 0, err
    assert f"{direct.score:.4f}" in out and "16 steps" in out
    assert mark_response(attribute_reward(reward_model, prompt, response, steps=16), 2) in out

    code, _, err = explain("--event", "no-such-event")
    assert code == 2 and "no interaction.logged event has id or request id 'no-such-event'" in err
    feedback_id = next(e.event.event_id for e in store.read(0) if e.event.type == "feedback.received")
    code, _, err = explain("--event", feedback_id)
    assert code == 2 and "is a feedback.received, not an interaction.logged" in err


# --- alerts: the reward detectors explain their most extreme example -----------------------------------------


@pytest.mark.parametrize("db_kind", ["sqlite"])
def test_a_reward_drift_alert_carries_the_attribution_of_its_evidence(
    store: SqlEventStore, reward_model: RewardModel
) -> None:
    """Through the daemon's wiring, the monitor runner over a real store, the audit trail and the review page:
    the explainer is built on the very model the detector scores with."""
    settings = load_settings(None, env={}).monitors
    (built,) = build_detectors(settings, ["reward_drift"], reward_model)
    assert isinstance(built, RewardDriftDetector) and isinstance(built.explainer, AttributionExplainer)
    assert built.explainer.model is reward_model and built.explainer.steps == DEFAULT_STEPS == settings.explain_steps
    off = load_settings(None, env={"ALIGND_MONITORS_EXPLAIN_ALERTS": "false"}).monitors
    assert getattr(build_detectors(off, ["reward_drift"], reward_model)[0], "explainer", "missing") is None
    fewer = load_settings(None, env={"ALIGND_MONITORS_EXPLAIN_STEPS": "8"}).monitors
    (over,) = build_detectors(fewer, ["over_optimisation"], reward_model)
    assert isinstance(over, OverOptimisationDetector) and isinstance(over.explainer, AttributionExplainer)
    assert over.explainer.model is reward_model and over.explainer.steps == 8

    # A small window, so that a few dozen real scores make a drift: helpful answers, then dismissive ones.
    config = DriftConfig(reference_size=24, window=24, check_every=8, alpha=0.01, bins=4, batch_size=8)
    detector = RewardDriftDetector(reward_model, config, explainer=built.explainer)
    topics = ["bread", "rivers", "taxes", "gardens", "music", "trains"]
    texts = [f"Of course! Here is a helpful overview of {topics[i % 6]}, happy to explain more." for i in range(24)]
    texts += [["No.", "Figure it out yourself.", "Not my problem, go away."][i % 3] for i in range(40)]
    shown = {f"i{n}": (f"Could you tell me something about {topics[n % 6]}?", r) for n, r in enumerate(texts, 1)}
    inbound = [interaction(f"r{e[1:]}", event_id=e, version="7", prompt=p, response=r) for e, (p, r) in shown.items()]
    store.append([decode_inbound(encode(m), fallback_event_id=f"t:0:{n}") for n, m in enumerate(inbound)])
    findings = MonitorRunner(store, [detector]).catch_up()
    assert findings, "the real reward model's scores did not drift"
    finding = findings[0]
    (alert,) = [s.event for s in store.read(0) if s.event.type == "anomaly.detected"]
    payload = alert.payload
    assert alert.event_id == finding.anomaly_id and payload == json.loads(json.dumps(finding.payload()))
    attribution, top = payload["statistics"]["attribution"], payload["statistics"]["top_tokens"]
    assert attribution["event_id"] in finding.evidence
    # The example explained is the evidence's lowest-scored (the scores fell), and the score is the model's.
    evidence = [shown[e] for e in finding.evidence]
    scores = reward_model.score([p for p, _ in evidence], [r for _, r in evidence])
    assert payload["statistics"]["median_shift"] < 0
    assert attribution["score"] == pytest.approx(min(scores), abs=1e-4)
    prompt, response = shown[attribution["event_id"]]
    assert reward_model.score([prompt], [response])[0] == pytest.approx(min(scores), abs=1e-6)
    # The response's tokens, in its own characters; with the prompt's share they add up to score - baseline.
    tokens = attribution["tokens"]
    assert [response[t["start"] : t["end"]] for t in tokens] == [t["text"] for t in tokens]
    assert "".join(t["text"] for t in tokens) == response.replace(" ", "")
    gap = attribution["score"] - attribution["baseline_score"]
    total = sum(t["value"] for t in tokens) + attribution["prompt_value"]
    assert abs(total - gap) <= 0.05 * abs(gap), (total, gap)
    assert abs(attribution["delta"]) <= 0.05 * abs(gap)
    ranked = sorted(tokens, key=lambda t: -abs(t["value"]))[: len(top)]
    assert top == [{"text": t["text"], "value": t["value"]} for t in ranked] and 0 < len(top) <= 10

    # The review page shows the response's tokens shaded, in order.
    assert AuditTrail(store).catch_up() >= 1  # the alert, and any enforcement it called for
    server = ReviewServer(store, host="127.0.0.1", port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}/audit/{quote(alert.event_id, safe='')}", timeout=30) as answer:
            page = answer.read().decode("utf-8")
    finally:
        server.stop()
    spans = re.findall(r'<span class="attr attr-(?:pos-[1-8]|neg-[1-8]|zero)" title="([^"]*)">(.*?)</span>', page)
    assert [text for _, text in spans] == [str(escape(t["text"])) for t in tokens]
    assert [float(value) for value, _ in spans] == pytest.approx([t["value"] for t in tokens], rel=1e-3)
