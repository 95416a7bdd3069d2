"""A scalar reward head over the mean of an encoder's token states.

Sentence encoders such as all-MiniLM-L6-v2 were trained so that the *mean* of their token states carries
the text's meaning (Reimers & Gurevych 2019, Sentence-BERT, §3); the [CLS] state and BERT's pooler, which
``AutoModelForSequenceClassification`` puts its head on, were left untrained by that objective. On
HH-RLHF harmless-base the head on the mean did better from the same LoRA and schedule (0.626 against 0.616
after one epoch, one seed; docs/benchmarks.md, reward model). transformers has no mean-pooled sequence classifier,
hence this module.

It answers like a Hugging Face sequence classifier (``.config`` with ``num_labels`` 1, an output with
``.logits``), so peft's ``SEQ_CLS`` task (which trains and saves a module named ``score`` in full) and TRL's
``RewardTrainer`` take it as they take ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPooledReward(torch.nn.Module):
    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.config.num_labels = 1
        self.score = torch.nn.Linear(self.config.hidden_size, 1)
        # As transformers initialises a new classification head.
        torch.nn.init.normal_(self.score.weight, std=getattr(self.config, "initializer_range", 0.02))
        torch.nn.init.zeros_(self.score.bias)

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Hub tags (TRL adds its own); kept on the encoder, the part that is a Hugging Face model."""
        self.encoder.add_model_tags(tags)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **_ignored: Any,  # labels, return_dict, use_cache...: what peft and TRL pass to any classifier
    ) -> SequenceClassifierOutput:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.score(pooled))
