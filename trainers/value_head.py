"""PPO's critic: a linear value head on the policy's last hidden state.

The classic RLHF recipe (Ziegler et al. 2019; Ouyang et al. 2022; TRL's ``AutoModelForCausalLMWithValueHead``)
puts the value function on the policy itself: one linear map from the final hidden state of each position to
``V(s_t)``, so the critic costs no second network and reads what the policy reads. It lives beside the LoRA
adapter rather than inside it (peft saves adapters, not new heads); the training loop checkpoints it with the
adapter (``trainers.loop``: an objective's ``modules``), so a PPO job resumes with the critic it had.
"""

from __future__ import annotations

import torch


class ValueHead(torch.nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        # Zero at the start: the first advantages are then the discounted rewards themselves, not a random
        # critic's noise; the head learns from its own first returns.
        torch.nn.init.zeros_(self.summary.weight)
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(batch, length, hidden)`` states -> ``(batch, length)`` values, in fp32 whatever the policy's dtype."""
        return self.summary(hidden.float()).squeeze(-1)
