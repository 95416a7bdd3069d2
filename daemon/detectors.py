"""The detectors as the settings configure them: part of the composition root (``bootstrap.App.detectors``).

Each detector's module, and the model it scores with (profanity-check, a Hugging Face classifier, MiniLM),
is imported only when that detector is wanted. The champion reward model, which two detectors score with,
comes from the registry: the :class:`~daemon.bootstrap.App` loads it and hands it in. With
``monitors.explain_alerts``, their alerts carry an integrated-gradients attribution computed on that same loaded
model (:class:`AttributionExplainer`), so it is never loaded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.settings import MonitorsSettings
    from monitors.base import Detector
    from monitors.detectors.drift import RewardExplainer
    from monitors.detectors.jailbreak import JailbreakScorer
    from trainers.reward import RewardModel


class AttributionExplainer:
    """The reward detectors' :class:`~monitors.detectors.drift.RewardExplainer`: integrated gradients
    (``trainers.attribution.attribute_reward``) over the reward model they score with, ``steps`` steps."""

    def __init__(self, model: RewardModel, steps: int) -> None:
        self.model = model
        self.steps = steps

    def explain(self, prompt: str, response: str) -> dict[str, Any]:
        from trainers.attribution import attribute_reward

        result = attribute_reward(self.model, prompt, response, steps=self.steps)
        tokens = []
        for t in result.tokens:
            start, end = t.start, t.end
            if t.part == "response":  # offsets in the response, and its own characters (not word pieces)
                start, end = start - result.response_start, end - result.response_start
            text = response[start:end] if t.part == "response" else result.text[start:end] or t.token
            tokens.append({"text": text, "start": start, "end": end, "part": t.part, "value": t.attribution})
        return {
            "tokens": tokens,
            "score": result.score,
            "baseline_score": result.baseline_score,
            "delta": result.delta,
            "steps": result.steps,
        }


def build_detectors(
    settings: MonitorsSettings, names: Sequence[str], reward_scorer: RewardModel | None
) -> list[Detector]:
    """One detector for each of ``names`` (known names: ``bootstrap.DETECTOR_NAMES``)."""
    from monitors.detectors.drift import LengthDriftDetector
    from monitors.detectors.feedback_spike import FeedbackSpikeDetector
    from monitors.detectors.flooding import FeedbackFloodingDetector
    from monitors.detectors.pii import PiiDetector
    from monitors.detectors.rates import HallucinationReportDetector

    explainer = (
        AttributionExplainer(reward_scorer, settings.explain_steps)
        if reward_scorer is not None and settings.explain_alerts
        else None
    )
    jailbreak_scorer = None
    if {"jailbreak_attempt", "jailbreak_success"} & set(names):
        from monitors.detectors.jailbreak import JailbreakConfig, JailbreakScorer, MiniLMEmbedder

        config = JailbreakConfig(pattern_boost=settings.jailbreak_pattern_boost)
        classifier = _jailbreak_classifier(settings)
        # the trained classifier replaces the similarity to known jailbreaks: no MiniLM embedding beside it
        embedder = MiniLMEmbedder(settings.embedding_model) if settings.embeddings and classifier is None else None
        # One scorer for both detectors: it remembers recent prompts, so each is analysed (and embedded) once.
        jailbreak_scorer = JailbreakScorer(embedder, config=config, classifier=classifier)
    factories: dict[str, Callable[[], Detector]] = {
        "pii": PiiDetector,
        "negative_feedback_spike": FeedbackSpikeDetector,
        "hallucination_reports": HallucinationReportDetector,
        "response_length_drift": LengthDriftDetector,
        "feedback_flooding": FeedbackFloodingDetector,
        "champion_regression": lambda: _champion_regression(settings),
        "toxicity": lambda: _toxicity(settings),
        "jailbreak_attempt": lambda: _jailbreak("attempt", jailbreak_scorer),
        "jailbreak_success": lambda: _jailbreak("success", jailbreak_scorer),
        "reward_drift": lambda: _reward_detector("reward_drift", reward_scorer, explainer),
        "over_optimisation": lambda: _reward_detector("over_optimisation", reward_scorer, explainer),
        "contributor_agreement": lambda: _agreement(settings, reward_scorer),
    }
    return [factories[name]() for name in names]


def _reward_detector(name: str, scorer: RewardModel | None, explainer: RewardExplainer | None) -> Detector:
    from monitors.detectors.drift import OverOptimisationDetector, RewardDriftDetector

    if scorer is None:
        raise ValueError(f"{name} scores with the champion reward model, and none was handed in")
    if name == "reward_drift":
        return RewardDriftDetector(scorer, explainer=explainer)
    return OverOptimisationDetector(scorer, explainer=explainer)


def _agreement(settings: MonitorsSettings, scorer: RewardModel | None) -> Detector:
    from monitors.detectors.agreement import AgreementConfig, ContributorAgreementDetector

    if scorer is None:
        raise ValueError(
            "contributor_agreement scores preferences with the champion reward model, and none was handed in"
        )
    config = AgreementConfig(
        alpha=settings.agreement_alpha,
        margin=settings.agreement_margin,
        min_pairs=settings.agreement_min_pairs,
        min_peer=settings.agreement_min_peer,
        min_population=settings.agreement_min_population,
        peer_floor=settings.agreement_peer_floor,
    )
    return ContributorAgreementDetector(scorer, config)


def _champion_regression(settings: MonitorsSettings) -> Detector:
    from monitors.detectors.champion import ChampionRegressionConfig, ChampionRegressionDetector

    return ChampionRegressionDetector(
        ChampionRegressionConfig(
            max_accuracy_drop=settings.regression_accuracy_drop, max_unsafe_rise=settings.regression_unsafe_rise
        )
    )


def _toxicity(settings: MonitorsSettings) -> Detector:
    from monitors.detectors.toxicity import (
        HuggingFaceToxicityScorer,
        ProfanityCheckScorer,
        ToxicityConfig,
        ToxicityDetector,
    )

    model = settings.toxicity_model
    scorer = HuggingFaceToxicityScorer(model) if model else ProfanityCheckScorer()
    return ToxicityDetector(scorer, ToxicityConfig(window=settings.toxicity_window))


def _jailbreak_classifier(settings: MonitorsSettings) -> Any:
    if not settings.jailbreak_classifier:
        return None
    from monitors.detectors.jailbreak_classifier import JailbreakClassifier

    return JailbreakClassifier(
        settings.jailbreak_classifier,
        runtime=settings.jailbreak_classifier_runtime,
        threshold=settings.jailbreak_classifier_threshold,
    )


def _jailbreak(kind: str, scorer: JailbreakScorer | None) -> Detector:
    from monitors.detectors.jailbreak import JailbreakDetector, JailbreakSuccessDetector

    return (JailbreakDetector if kind == "attempt" else JailbreakSuccessDetector)(scorer=scorer)
