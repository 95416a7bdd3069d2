"""Constitutional revision without a store or a model: loading, the critique -> revision loop, the events,
and the demonstrations projection folding them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from events.codec import canonical_json
from events.errors import ConfigurationError
from events.model import Event, StoredEvent
from events.projections.base import DEMONSTRATION_GENERATED, PROJECTIONS, Key, Row
from trainers.constitution import (
    Constitution,
    FlaggedInteraction,
    Message,
    Principle,
    choose_principles,
    clean,
    load_constitution,
    revise,
    revise_batch,
    revision_events,
)

NOW = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)

CUSTOM = """\
# an operator's own constitution
version: 1
principles:
  - name: kindness
    critique: Point out anything unkind in the response.
    revision: Rewrite the response kindly.
  - name: brevity
    critique: Point out anything superfluous.
    revision: Rewrite the response briefly.
    topics: [other]
  - name: accuracy
    critique: Point out anything false.
    revision: Rewrite the response truthfully.
    topics: [hallucination]
"""


class FakePolicy:
    """A policy that answers critique and revision requests from a script and records every conversation."""

    def __init__(self, revision: str | None = None) -> None:
        self.calls: list[list[list[Message]]] = []
        self.revision = revision

    @property
    def conversations(self) -> list[list[Message]]:
        return [c for call in self.calls for c in call]

    def __call__(self, conversations: list[list[Message]]) -> list[str]:
        self.calls.append(conversations)
        out = []
        for conversation in conversations:
            n = len(self.conversations) - len(conversations) + len(out) + 1
            ask = conversation[-1]["content"]
            if ask.startswith("Critique request:"):
                out.append(f"  Critique: critique #{n}\n")
            else:
                out.append(self.revision if self.revision is not None else f"Revision: revised #{n}")
        return out


def flagged(
    request_id: str = "r-1", *, reasons: tuple[str, ...] = ("flag:toxic",), user: str | None = "u-1", **kw: str
) -> FlaggedInteraction:
    fields = {
        "prompt_kind": "text",
        "prompt": f"What is the capital of France? ({request_id})",
        "response": "Paris, you idiot.",
        **kw,
    }
    return FlaggedInteraction(
        request_id=request_id,
        event_id=f"ev-{request_id}",
        interaction_seq=7,
        model_name="smollm2",
        model_version="3",
        user_id=user,
        reasons=reasons,
        **fields,
    )


@pytest.fixture
def custom(tmp_path: Path) -> Constitution:
    path = tmp_path / "mine.yaml"
    path.write_text(CUSTOM)
    return load_constitution(path)


# --- loading ------------------------------------------------------------------------------------------


def test_the_packaged_default_has_the_six_principles() -> None:
    constitution = load_constitution(None)
    names = [p.name for p in constitution.principles]
    assert names == ["harmlessness", "honesty", "privacy", "jailbreak_resistance", "respect", "helpfulness"]
    assert all(p.critique and p.revision for p in constitution.principles)
    assert "packaged default" in constitution.source
    assert load_constitution().sha256 == constitution.sha256


def test_a_custom_file_loads_and_its_digest_follows_content_not_layout(tmp_path: Path, custom: Constitution) -> None:
    assert custom.principles[1] == Principle(
        "brevity", "Point out anything superfluous.", "Rewrite the response briefly.", ("other",)
    )
    reformatted = tmp_path / "reformatted.yaml"
    reformatted.write_text("# another comment\n\n" + CUSTOM.replace("version: 1\n", "version: 1   # v1\n"))
    assert load_constitution(reformatted).sha256 == custom.sha256
    reworded = tmp_path / "reworded.yaml"
    reworded.write_text(CUSTOM.replace("kindly", "gently"))
    assert load_constitution(reworded).sha256 != custom.sha256


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("principles: [unclosed", "not valid YAML"),
        ("", "top level"),
        ("- a list", "top level"),
        ("principles: []", "principles"),
        ("version: 2\nprinciples: [{name: a, critique: c, revision: r}]", "version"),
        ("principles: [{name: a, revision: r}]", "principles.0.critique: Field required"),
        ("principles: [{name: a, critique: '  ', revision: r}]", "principles.0.critique"),
        ("principles: [{name: 'two words', critique: c, revision: r}]", "principles.0.name"),
        ("principles: [{name: a, critque: c, critique: c, revision: r}]", "principles.0.critque"),
        ("principles: [{name: a, critique: c, revision: r}, {name: a, critique: d, revision: s}]", "repeated: ['a']"),
        ("principles: [{name: a, critique: c, revision: r, topics: pii}]", "principles.0.topics"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_constitution(path)
    assert str(path) in str(caught.value) and problem in str(caught.value)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="nope.yaml: cannot read it"):
        load_constitution(tmp_path / "nope.yaml")


# --- the loop -----------------------------------------------------------------------------------------


def test_each_principle_is_critiqued_then_revised_and_the_last_revision_is_the_demonstration(
    custom: Constitution,
) -> None:
    policy = FakePolicy()
    interaction = flagged()
    result = revise(interaction, custom, policy, principles_per_item=2, seed=1)

    assert result.skipped is None
    assert len(policy.calls) == 4  # critique, revision, critique, revision
    first, second = (custom.principles[[p.name for p in custom.principles].index(n)] for n in result.principles)
    critique_1, revision_1, critique_2, revision_2 = policy.conversations
    # the critique request shows the original conversation and response, and carries the principle
    assert critique_1[0] == {"role": "user", "content": interaction.prompt}
    assert critique_1[1] == {"role": "assistant", "content": interaction.response}
    assert critique_1[2]["role"] == "user" and first.critique in critique_1[2]["content"]
    # the revision request follows the critique the model gave
    assert revision_1[:3] == critique_1
    assert revision_1[3] == {"role": "assistant", "content": "critique #1"}
    assert first.revision in revision_1[4]["content"]
    # the next principle works on the revision, from the original conversation
    assert critique_2[0] == critique_1[0]
    assert critique_2[1] == {"role": "assistant", "content": "revised #2"}
    assert second.critique in critique_2[2]["content"] and second.revision in revision_2[4]["content"]

    assert result.critiques == ("critique #1", "critique #3")
    assert result.revisions == ("revised #2", "revised #4")
    assert result.response == "revised #4"


def test_a_chat_prompt_is_replayed_as_its_messages(custom: Constitution) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    policy = FakePolicy()
    revise(flagged(prompt_kind="messages", prompt=canonical_json(messages)), custom, policy, principles_per_item=1)
    assert policy.conversations[0][:2] == messages


def test_principle_choice_is_deterministic_prefers_relevant_topics_and_varies_with_the_seed(
    custom: Constitution,
) -> None:
    hallucinated = flagged(reasons=("flag:hallucination",))
    picks = {choose_principles(hallucinated, custom, 2, seed).__getitem__(0).name for seed in range(20)}
    assert picks == {"accuracy"}
    assert choose_principles(hallucinated, custom, 3, 5) == choose_principles(hallucinated, custom, 3, 5)
    orders = {tuple(p.name for p in choose_principles(flagged(f"r{n}"), custom, 3, 0)) for n in range(30)}
    assert len(orders) > 1 and all(len(set(order)) == 3 for order in orders)
    seeds = {tuple(p.name for p in choose_principles(flagged(), custom, 3, seed)) for seed in range(30)}
    assert len(seeds) > 1
    assert len(choose_principles(flagged(), custom, 10, 0)) == 3


def test_echoed_labels_and_whitespace_are_cleaned() -> None:
    assert clean("  Revision: Paris is the capital.\n") == "Paris is the capital."
    assert clean("**Revised response:** Paris.") == "Paris."
    assert clean("Critique: too rude") == "too rude"
    assert clean("Paris: the capital of France.") == "Paris: the capital of France."


@pytest.mark.parametrize(
    ("revision", "why"), [("Paris, you idiot.", "identical"), ("   ", "empty revision"), ("Revision:", "empty")]
)
def test_a_revision_that_changes_nothing_is_skipped(custom: Constitution, revision: str, why: str) -> None:
    result = revise(flagged(), custom, FakePolicy(revision=revision), principles_per_item=2)
    assert result.skipped is not None and why in result.skipped
    assert revision_events([result], occurred_at=NOW) == []


def test_a_batch_shares_each_generate_call(custom: Constitution) -> None:
    policy = FakePolicy()
    results = revise_batch([flagged(f"r{n}") for n in range(5)], custom, policy, principles_per_item=2)
    assert [len(call) for call in policy.calls] == [5, 5, 5, 5]
    assert all(r.skipped is None and len(r.revisions) == 2 for r in results)
    assert revise_batch([], custom, policy) == []


def test_a_port_that_loses_completions_is_an_error(custom: Constitution) -> None:
    with pytest.raises(ValueError, match="1 completions for 2 conversations"):
        revise_batch([flagged("a"), flagged("b")], custom, lambda conversations: ["only one"])


# --- events -------------------------------------------------------------------------------------------


def test_events_carry_the_demonstration_and_have_deterministic_ids(custom: Constitution) -> None:
    interaction = flagged()
    [event] = revision_events([revise(interaction, custom, FakePolicy(), seed=3)], occurred_at=NOW)
    [again] = revision_events([revise(interaction, custom, FakePolicy(), seed=3)])
    assert event.event_id == again.event_id and event.event_id.startswith("demo:constitutional:")
    assert len(event.event_id) <= 128
    assert (event.type, event.source, event.occurred_at) == (DEMONSTRATION_GENERATED, "alignd.trainers", NOW)
    payload = dict(event.payload)
    assert payload == {
        "request_id": "r-1",
        "origin": "constitutional",
        "prompt_kind": "text",
        "prompt": interaction.prompt,
        "response": "revised #4",
        "original_response": interaction.response,
        "model": {"name": "smollm2", "version": "3"},
        "principles": payload["principles"],
        "critiques": ["critique #1", "critique #3"],
        "constitution_sha256": custom.sha256,
        "user": "u-1",
        "source_event_id": "ev-r-1",
    }
    assert len(payload["principles"]) == 2
    [anonymous] = revision_events([revise(flagged(user=None), custom, FakePolicy(), seed=3)])
    assert "user" not in anonymous.payload
    # another constitution, or other principles, is other work
    other = Constitution(custom.principles[:2], "other")
    [elsewhere] = revision_events([revise(interaction, other, FakePolicy(), seed=3)])
    assert elsewhere.event_id != event.event_id


# --- the projection folds them ------------------------------------------------------------------------


def test_the_demonstrations_projection_folds_generated_demonstrations(custom: Constitution) -> None:
    [event] = revision_events([revise(flagged(), custom, FakePolicy())], occurred_at=NOW)
    stored = StoredEvent(seq=42, event=event, recorded_at=NOW)
    broken = StoredEvent(43, Event("demo:broken", DEMONSTRATION_GENERATED, NOW, "t", {"request_id": "x"}), NOW)
    projection = PROJECTIONS["demonstrations"]
    assert DEMONSTRATION_GENERATED in projection.types
    assert projection.units([stored, broken], []) == [stored, broken]
    rows: dict[Key, Row] = {}
    for unit in (stored, broken):
        projection.fold(rows, unit)
    assert list(rows) == projection.keys(stored) == [(event.event_id,)]
    row = rows[(event.event_id,)]
    assert set(row) == {c.name for c in projection.table.columns}
    assert row == {
        "demo_id": event.event_id,
        "feedback_event_id": event.event_id,
        "seq": 42,
        "request_id": "r-1",
        "origin": "constitutional",
        "prompt_kind": "text",
        "prompt": flagged().prompt,
        "response": "revised #4",
        "model_name": "smollm2",
        "model_version": "3",
        "user_id": "u-1",
    }
    assert json.loads(canonical_json(row)) == row
