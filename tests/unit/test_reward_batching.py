"""How the reward model groups a batch's texts into forward passes (trainers.reward.length_groups)."""

from __future__ import annotations

import pytest

from trainers.reward import length_groups


def test_groups_hold_neighbours_in_length_and_cover_every_text_once() -> None:
    lengths = [30, 5, 250, 12, 7, 240, 31, 9]
    groups = length_groups(lengths, 3)
    assert groups == [[1, 4, 7], [3, 0, 6], [5, 2]]
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))


def test_size_zero_is_one_pass_in_the_given_order() -> None:
    assert length_groups([30, 5, 250], 0) == [[0, 1, 2]]


@pytest.mark.parametrize("size", [0, 1, 4])
def test_no_texts_no_groups(size: int) -> None:
    assert length_groups([], size) == []


def test_equal_lengths_keep_their_order() -> None:
    # sorted() is stable: chosen and rejected of the same length stay in the order they came.
    assert length_groups([8, 8, 8, 8], 2) == [[0, 1], [2, 3]]
