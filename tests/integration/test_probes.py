"""The direction-ablation hook on a real (tiny) Llama through the policy's own loading code (trainers.probes)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainers.probes import ablated, last_token_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def block_inputs(policy: Any, prompts: list[str]) -> list[torch.Tensor]:
    """What each decoder block receives at the prompt's last token (the previous block's output, after hooks)."""
    from trainers.probes import decoder_blocks

    seen: list[torch.Tensor] = []

    def capture(_module: Any, args: Any, kwargs: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden[:, -1, :].detach().float().clone())

    handles = [b.register_forward_pre_hook(capture, with_kwargs=True) for b in decoder_blocks(policy.model)]
    try:
        last_token_states(policy, prompts)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_ablation_projects_the_direction_out_of_a_block_s_output_and_only_while_held() -> None:
    from trainers.config import PolicyConfig
    from trainers.policy import Policy

    policy = Policy.create(PolicyConfig(model="tiny-random-llama", max_length=64, max_prompt_length=32))
    prompts = ["How do I bake bread?", "Tell me about rivers.", "What is 2 plus 2?"]
    before = block_inputs(policy, prompts)
    direction = before[1].mean(0)  # what block 0 writes, on average: surely present in its output
    unit = direction / direction.norm()
    assert (before[1] @ unit).abs().max() > 1e-2
    with ablated(policy.model, direction, blocks=[0]):
        during = block_inputs(policy, prompts)
    # Block 1 reads block 0's output with the direction projected out; block 0's own input is untouched.
    assert torch.allclose(during[1] @ unit, torch.zeros(3), atol=1e-4)
    assert torch.equal(during[0], before[0])
    after = block_inputs(policy, prompts)  # the hooks are gone
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
