"""Integrated-gradients attribution of the reward model's score, on the real all-MiniLM-L6-v2 reward model.

The model is trained for one step on a learnable preference (so its LoRA weights and head are not the
initial ones) through the real training loop, on CPU.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainers.attribution import DEFAULT_STEPS, attribute_reward, mark_response
from trainers.config import RewardConfig
from trainers.loop import train
from trainers.reward import RewardModel, RewardObjective, prompt_messages, render

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
