"""Linear probes per layer, representation drift and the direction-ablation hook (trainers.probes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.probes import log_probes, probe_chart, probe_concept, probe_layers, representation_drift


def planted(n: int = 120, layers: int = 4, hidden: int = 16, at: int = 2, seed: int = 0) -> tuple[Any, list[int], Any]:
    """States in which only layer ``at`` carries the label, along one direction; the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    labels = [i % 2 for i in range(n)]
    states = torch.randn(n, layers, hidden, generator=g)
    direction = torch.randn(hidden, generator=g)
    direction /= direction.norm()
    states[:, at, :] += 3.0 * torch.tensor([2.0 * y - 1 for y in labels]).unsqueeze(1) * direction
    return states, labels, direction


def test_the_probe_finds_the_layer_and_the_direction_that_carry_the_concept() -> None:
    states, labels, direction = planted()
    result = probe_layers(states, labels, "refusal", test_fraction=0.3, seed=0)
    assert result.best_layer == 2 and result.accuracy[2] >= 0.95
    assert all(result.accuracy[i] < 0.8 for i in (0, 1, 3)), result.accuracy
    assert result.majority == pytest.approx(0.5) and result.n_test == 36
    assert float(result.directions[2] @ direction) > 0.9


def test_representation_drift_is_the_cosine_of_the_directions() -> None:
    states, labels, _ = planted(seed=0)
    champion = probe_layers(states, labels, "refusal")
    assert representation_drift(champion, champion) == pytest.approx(1.0)
    moved, _, _ = planted(seed=5)  # the concept along another (random) direction
    assert abs(representation_drift(champion, probe_layers(moved, labels, "refusal"))) < 0.6


def test_a_probe_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        probe_layers(torch.zeros(4, 2, 3), [1, 1, 1, 1], "toxic")


class FakeRun:
    def __init__(self) -> None:
        self.metrics: list[tuple[dict[str, float], int]] = []
        self.artifacts: list[tuple[Path, str]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((metrics, step))

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        self.artifacts.append((local_dir, artifact_path))


def test_accuracy_per_layer_is_logged_with_the_layer_as_step_and_charted(tmp_path: Path) -> None:
    states, labels, _ = planted()
    result = probe_layers(states, labels, "refusal")
    run = FakeRun()
    chart = log_probes(run, result, tmp_path / "charts", drift=0.8)
    steps = [(step, m["probe.refusal.accuracy"]) for m, step in run.metrics if "probe.refusal.accuracy" in m]
    assert steps == list(enumerate(result.accuracy))
    assert ({"probe.refusal.drift": 0.8}, 2) in run.metrics
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and run.artifacts == [(tmp_path / "charts", "probes")]


def test_a_concept_is_probed_in_candidate_and_reference_with_the_drift_between_them() -> None:
    states, labels, _ = planted(seed=0)
    moved, _, _ = planted(seed=5)
    prompts = [f"p{i}" for i in range(len(labels))]
    found = probe_concept(
        "refusal", prompts, labels, lambda p: states[: len(p)], labels, lambda p: moved[: len(p)], min_per_class=8
    )
    assert found.result is not None and found.reference is not None
    assert found.drift == pytest.approx(representation_drift(found.reference, found.result))
    metrics = found.metrics()
    assert metrics["probe.refusal.best_layer"] == 2.0 and metrics["probe.refusal.best_accuracy"] >= 0.95
    assert metrics["probe.refusal.drift"] == found.drift
    assert "best layer 2" in found.note and "drift to the champion's direction" in found.note


def test_a_model_with_too_few_of_a_class_is_not_probed_and_the_note_says_why() -> None:
    states, labels, _ = planted()
    prompts = [f"p{i}" for i in range(len(labels))]
    few = [1 if i < 5 else 0 for i in range(len(labels))]  # five refusals
    found = probe_concept("refusal", prompts, few, lambda p: states, min_per_class=8)
    assert found.result is None and found.metrics() == {}
    assert found.note == "refusal not probed: 5 positive and 115 negative of 120 (at least 8 of each needed)"
    # The candidate probed, the reference (what serves) with too few: no drift, and the note says so.
    found = probe_concept(
        "refusal", prompts, labels, lambda p: states, few, lambda p: states, reference_name="base model"
    )
    assert found.result is not None and found.drift is None and "probe.refusal.drift" not in found.metrics()
    assert found.note.endswith(
        "no drift: the base model has 5 positive and 115 negative of 120 (at least 8 of each needed)"
    )


def test_the_chart_draws_the_reference_beside_the_candidate(tmp_path: Path) -> None:
    states, labels, _ = planted()
    result = probe_layers(states, labels, "refusal")
    chart = probe_chart(result, tmp_path, reference=result)
    assert chart == tmp_path / "probe-refusal.png" and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
