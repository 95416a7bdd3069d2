"""Each built-in projection folded over hand-made joined units, a plain dict standing in for the table."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from sqlalchemy import String

from events.codec import canonical_json
from events.model import StoredEvent
from events.projections.base import PROJECTIONS, TOP_RATING, Key, Row, prompt_of
from events.projections.join import Joined

from ._stored import feedback, interaction

Rows = dict[Key, Row]


def fold(name: str, units: Iterable[Joined], rows: Rows | None = None) -> Rows:
    """Fold like the runner does, checking that each unit touches only the rows its ``keys()`` named."""
    projection = PROJECTIONS[name]
    rows = {} if rows is None else rows
    for unit in units:
        before = {key: dict(row) for key, row in rows.items()}
        projection.fold(rows, unit)
        touched = {key for key, row in rows.items() if before.get(key) != row}
        assert touched <= set(projection.keys(unit)), f"{name} touched rows keys() did not name"
    return rows


def joined(logged: StoredEvent, *feedbacks: StoredEvent) -> list[Joined]:
    """The interaction's own unit followed by one unit per feedback, as join_batch emits them."""
    return [Joined(logged), *(Joined(logged, f) for f in feedbacks)]


def rich_units() -> list[Joined]:
    """Every feedback kind over two model versions, with early feedback among them."""
    a = interaction(2, "a", model=("smollm2", "1"), user="u-a")
    b = interaction(5, "b", model=("smollm2", "2"), messages=[{"role": "user", "content": "hi"}])
    return [
        *joined(a, feedback(1, "a", "thumbs", "up")),
        Joined(a, feedback(3, "a", "rating", 5, user="rater")),
        Joined(a, feedback(4, "a", "flag", {"category": "toxic"})),
        *joined(b, feedback(6, "b", "preference", {"chosen": "c", "rejected": "r"})),
        Joined(b, feedback(7, "b", "correction", {"response": "better"})),
        Joined(b, feedback(8, "b", "signal", {"name": "copied"})),
        Joined(a, feedback(9, "a", "thumbs", "down")),
    ]


# --- shared contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_rows_have_exactly_the_table_columns(name: str) -> None:
    rows = fold(name, rich_units())
    columns = {c.name for c in PROJECTIONS[name].table.columns}

    assert rows
    for key, row in rows.items():
        assert set(row) == columns
        assert key == tuple(row[c] for c in PROJECTIONS[name].key_columns)


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_rows_are_canonical_json_serialisable(name: str) -> None:
    rows = fold(name, rich_units())

    for row in rows.values():
        assert json.loads(canonical_json(row)) == row


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
def test_folding_the_same_units_twice_from_nothing_gives_the_same_rows(name: str) -> None:
    assert fold(name, rich_units()) == fold(name, rich_units())


def test_the_four_projections_are_registered_by_name() -> None:
    assert set(PROJECTIONS) == {"interactions", "preference_pairs", "demonstrations", "feedback_stats"}
    assert all(p.name == name for name, p in PROJECTIONS.items())


# --- prompt_of ------------------------------------------------------------------------------------------


def test_prompt_of_a_prompt_is_the_text() -> None:
    assert prompt_of({"prompt": "What is 2+2?"}) == ("text", "What is 2+2?")


def test_prompt_of_an_empty_prompt_is_still_text() -> None:
    assert prompt_of({"prompt": ""}) == ("text", "")


def test_prompt_of_messages_is_their_canonical_json() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße"}]

    kind, prompt = prompt_of({"messages": messages})

    assert kind == "messages"
    assert prompt == '[{"content":"Be brief.","role":"system"},{"content":"Grüße","role":"user"}]'
    assert json.loads(prompt) == messages


# --- interactions ---------------------------------------------------------------------------------------


def test_interaction_row_holds_the_logged_interaction_with_zero_counts() -> None:
    logged = interaction(3, "r1", response="Paris.", prompt="Capital?", model=("smollm2", "7"), user="u-1")

    rows = fold("interactions", [Joined(logged)])

    assert rows == {
        ("r1",): {
            "request_id": "r1",
            "interaction_seq": 3,
            "event_id": "i-3",
            "occurred_at": "2026-01-31T12:00:03.000000+00:00",
            "model_name": "smollm2",
            "model_version": "7",
            "prompt_kind": "text",
            "prompt": "Capital?",
            "response": "Paris.",
            "user_id": "u-1",
            "session_id": None,
            "feedback_count": 0,
            "thumbs_up": 0,
            "thumbs_down": 0,
            "rating_count": 0,
            "rating_sum": 0,
            "last_rating": None,
            "flags": "[]",
            "corrections": 0,
            "preferences": 0,
            "signals": 0,
            "last_feedback_seq": None,
        }
    }


def test_interaction_row_of_a_chat_keeps_the_messages_as_canonical_json() -> None:
    messages = [{"role": "user", "content": "hi"}]

    row = fold("interactions", [Joined(interaction(1, "r1", messages=messages))])[("r1",)]

    assert (row["prompt_kind"], row["prompt"]) == ("messages", canonical_json(messages))


def test_interactions_count_thumbs() -> None:
    logged = interaction(1, "r1")
    units = joined(logged, *(feedback(s, "r1", "thumbs", v) for s, v in [(2, "up"), (3, "down"), (4, "up")]))

    row = fold("interactions", units)[("r1",)]

    assert (row["thumbs_up"], row["thumbs_down"]) == (2, 1)
    assert row["feedback_count"] == 3
    assert row["last_feedback_seq"] == 4


def test_interactions_sum_ratings_and_keep_the_last() -> None:
    logged = interaction(1, "r1")

    row = fold("interactions", joined(logged, feedback(2, "r1", "rating", 4), feedback(3, "r1", "rating", 2)))[("r1",)]

    assert (row["rating_count"], row["rating_sum"], row["last_rating"]) == (2, 6, 2)


def test_interactions_collect_flag_categories_sorted_and_once_each() -> None:
    logged = interaction(1, "r1")
    flags = [feedback(s, "r1", "flag", {"category": c}) for s, c in [(2, "pii"), (3, "toxic"), (4, "pii")]]

    row = fold("interactions", joined(logged, *flags))[("r1",)]

    assert row["flags"] == '["pii","toxic"]'
    assert row["feedback_count"] == 3


def test_interactions_count_corrections_preferences_and_signals() -> None:
    logged = interaction(1, "r1")
    units = joined(
        logged,
        feedback(2, "r1", "correction", {"response": "x"}),
        feedback(3, "r1", "preference", {"chosen": "a", "rejected": "b"}),
        feedback(4, "r1", "signal", {"name": "regenerated"}),
        feedback(5, "r1", "signal", {"name": "copied", "value": 1}),
    )

    row = fold("interactions", units)[("r1",)]

    assert (row["corrections"], row["preferences"], row["signals"]) == (1, 1, 2)
    assert row["feedback_count"] == 4


def test_interactions_count_early_feedback_joined_when_the_interaction_arrived() -> None:
    logged = interaction(5, "r1")

    row = fold("interactions", joined(logged, feedback(1, "r1", "thumbs", "down")))[("r1",)]

    assert row["thumbs_down"] == 1
    assert row["last_feedback_seq"] == 1


def test_interactions_fold_onto_a_row_loaded_from_the_table() -> None:
    logged = interaction(1, "r1")
    stored_rows = fold("interactions", [Joined(logged)])

    rows = fold("interactions", [Joined(logged, feedback(2, "r1", "thumbs", "up"))], rows=stored_rows)

    assert rows[("r1",)]["thumbs_up"] == 1


# --- preference pairs -----------------------------------------------------------------------------------


def test_preference_feedback_becomes_a_pair() -> None:
    logged = interaction(1, "r1", prompt="Which?", model=("smollm2", "3"))
    preferred = feedback(2, "r1", "preference", {"chosen": "good", "rejected": "bad"}, user="u-7", event_id="fb-1")

    rows = fold("preference_pairs", joined(logged, preferred))

    assert rows == {
        ("fb-1",): {
            "pair_id": "fb-1",
            "seq": 2,
            "request_id": "r1",
            "origin": "preference",
            "prompt_kind": "text",
            "prompt": "Which?",
            "chosen": "good",
            "rejected": "bad",
            "model_name": "smollm2",
            "model_version": "3",
            "user_id": "u-7",
        }
    }


def test_correction_is_preferred_over_the_logged_response() -> None:
    logged = interaction(1, "r1", response="Lyon.")
    corrected = feedback(2, "r1", "correction", {"response": "Paris."}, event_id="fb-2")

    row = fold("preference_pairs", joined(logged, corrected))[("fb-2",)]

    assert (row["chosen"], row["rejected"], row["origin"]) == ("Paris.", "Lyon.", "correction")


def test_correction_equal_to_the_logged_response_makes_no_pair() -> None:
    logged = interaction(1, "r1", response="Paris.")

    assert fold("preference_pairs", joined(logged, feedback(2, "r1", "correction", {"response": "Paris."}))) == {}


def test_preference_with_chosen_equal_to_rejected_makes_no_pair() -> None:
    logged = interaction(1, "r1")
    tie = feedback(2, "r1", "preference", {"chosen": "same", "rejected": "same"})

    assert fold("preference_pairs", joined(logged, tie)) == {}


@pytest.mark.parametrize(
    ("kind", "value"),
    [("thumbs", "up"), ("rating", 5), ("flag", {"category": "other"}), ("signal", {"name": "copied"})],
)
def test_other_feedback_kinds_make_no_pair(kind: str, value: Any) -> None:
    logged = interaction(1, "r1")

    assert fold("preference_pairs", joined(logged, feedback(2, "r1", kind, value))) == {}


def test_pair_from_early_feedback_is_positioned_at_the_interaction() -> None:
    logged = interaction(9, "r1", messages=[{"role": "user", "content": "q"}])
    early = feedback(4, "r1", "preference", {"chosen": "a", "rejected": "b"}, event_id="fb-early")

    row = fold("preference_pairs", joined(logged, early))[("fb-early",)]

    assert row["seq"] == 9
    assert row["prompt_kind"] == "messages"


def test_each_preference_is_its_own_pair() -> None:
    logged = interaction(1, "r1")
    units = joined(
        logged,
        feedback(2, "r1", "preference", {"chosen": "a", "rejected": "b"}),
        feedback(3, "r1", "preference", {"chosen": "c", "rejected": "d"}),
    )

    assert set(fold("preference_pairs", units)) == {("f-2",), ("f-3",)}


# --- demonstrations -------------------------------------------------------------------------------------


def test_correction_becomes_a_demonstration() -> None:
    logged = interaction(1, "r1", prompt="Capital?", response="Lyon.")
    corrected = feedback(2, "r1", "correction", {"response": "Paris."}, user="u-3", event_id="fb-9")

    rows = fold("demonstrations", joined(logged, corrected))

    assert rows == {
        ("fb-9",): {
            "demo_id": "fb-9",
            "feedback_event_id": "fb-9",
            "seq": 2,
            "request_id": "r1",
            "origin": "correction",
            "prompt_kind": "text",
            "prompt": "Capital?",
            "response": "Paris.",
            "model_name": "smollm2",
            "model_version": "1",
            "user_id": "u-3",
        }
    }


def test_top_rating_makes_the_logged_response_a_demonstration() -> None:
    logged = interaction(1, "r1", response="Paris.")

    rows = fold("demonstrations", joined(logged, feedback(2, "r1", "rating", TOP_RATING)))

    assert list(rows) == [("top_rated:r1",)]
    row = rows[("top_rated:r1",)]
    assert (row["origin"], row["response"], row["seq"]) == ("top_rated", "Paris.", 2)


def test_top_rated_demonstration_is_made_once_per_request() -> None:
    logged = interaction(1, "r1")
    units = joined(logged, feedback(2, "r1", "rating", 5, user="first"), feedback(3, "r1", "rating", 5, user="second"))

    rows = fold("demonstrations", units)

    assert list(rows) == [("top_rated:r1",)]
    assert rows[("top_rated:r1",)]["user_id"] == "first"


@pytest.mark.parametrize("rating", [1, 2, 3, 4])
def test_rating_below_the_top_makes_no_demonstration(rating: int) -> None:
    logged = interaction(1, "r1")

    assert fold("demonstrations", joined(logged, feedback(2, "r1", "rating", rating))) == {}


def test_each_correction_is_its_own_demonstration() -> None:
    logged = interaction(1, "r1")
    units = joined(
        logged,
        feedback(2, "r1", "correction", {"response": "one"}),
        feedback(3, "r1", "correction", {"response": "two"}),
        feedback(4, "r1", "rating", 5),
    )

    rows = fold("demonstrations", units)

    assert set(rows) == {("f-2",), ("f-3",), ("top_rated:r1",)}


def test_top_rated_demo_id_fits_its_column_for_the_longest_request_id() -> None:
    from pydantic import TypeAdapter

    from events.schemas import InteractionLoggedV1

    longest = TypeAdapter(InteractionLoggedV1).json_schema()["properties"]["request_id"]["maxLength"]
    request_id = "r" * longest
    logged = interaction(1, request_id)

    rows = fold("demonstrations", joined(logged, feedback(2, request_id, "rating", 5)))

    (demo_id,) = (key[0] for key in rows)
    column = PROJECTIONS["demonstrations"].table.c.demo_id.type
    assert isinstance(column, String) and column.length is not None
    assert len(demo_id) <= column.length


# --- feedback stats -------------------------------------------------------------------------------------


def test_feedback_stats_are_kept_per_model_version() -> None:
    rows = fold("feedback_stats", rich_units())

    assert set(rows) == {("smollm2", "1"), ("smollm2", "2")}
    v1, v2 = rows[("smollm2", "1")], rows[("smollm2", "2")]
    assert v1 == {
        "model_name": "smollm2",
        "model_version": "1",
        "interactions": 1,
        "feedback": 4,
        "thumbs_up": 1,
        "thumbs_down": 1,
        "rating_count": 1,
        "rating_sum": 5,
        "flag_toxic": 1,
        "flag_jailbreak": 0,
        "flag_hallucination": 0,
        "flag_pii": 0,
        "flag_other": 0,
        "corrections": 0,
        "preferences": 0,
        "signals": 0,
        "last_seq": 9,
    }
    assert (v2["interactions"], v2["feedback"]) == (1, 3)
    assert (v2["preferences"], v2["corrections"], v2["signals"]) == (1, 1, 1)
    assert v2["last_seq"] == 8


@pytest.mark.parametrize("category", ["toxic", "jailbreak", "hallucination", "pii", "other"])
def test_feedback_stats_count_flags_by_category(category: str) -> None:
    logged = interaction(1, "r1")

    row = fold("feedback_stats", joined(logged, feedback(2, "r1", "flag", {"category": category})))[("smollm2", "1")]

    assert row[f"flag_{category}"] == 1
    assert sum(row[f"flag_{c}"] for c in ("toxic", "jailbreak", "hallucination", "pii", "other")) == 1


def test_feedback_stats_attribute_feedback_to_the_interactions_model() -> None:
    first = interaction(1, "r1", model=("smollm2", "1"))
    second = interaction(2, "r2", model=("smollm2", "2"))
    units = [*joined(first), *joined(second), Joined(first, feedback(3, "r1", "thumbs", "down"))]

    rows = fold("feedback_stats", units)

    assert rows[("smollm2", "1")]["thumbs_down"] == 1
    assert rows[("smollm2", "2")]["thumbs_down"] == 0
    assert rows[("smollm2", "2")]["last_seq"] == 2


def test_feedback_stats_last_seq_never_goes_back() -> None:
    logged = interaction(10, "r1")

    row = fold("feedback_stats", joined(logged, feedback(3, "r1", "thumbs", "up")))[("smollm2", "1")]

    assert row["last_seq"] == 10
