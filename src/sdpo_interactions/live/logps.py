"""Per-token log-probs of answers, one function for the server and the learner alike.

The server logs log p(y_t | x, y_<t) of each answer right after sampling it, with the weights that sampled it; the
learner computes the same quantity, by the same code, for the importance ratio of its update. An answer scored by an
unchanged adapter therefore has a ratio of exactly 1 (up to the batch's padding), and the ratio of a later adapter
measures only what the updates changed. As in TRL, the policy is the temperature-scaled distribution
softmax(logits / T), at the temperature the answer was sampled with (1 for a greedy answer); top-p and top-k
truncation are not part of the ratio.

Shapes: B answers, C context tokens (left-padded), T answer tokens (right-padded).
"""

from __future__ import annotations

from typing import Optional

import torch
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from sdpo_interactions.core.batch import pad_rows


def scoring_temperature(temperature: float) -> float:
    """The temperature an answer is scored at: its sampling temperature, or 1 for a greedy (temperature 0) one."""
    return temperature if temperature > 0 else 1.0


def completion_logps(model, context_ids: torch.Tensor, context_mask: torch.Tensor, completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor, temperature: float, *, with_entropy: bool = False
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log p(y_t | context, y_<t) (B, T) at `temperature`, and the entropy of each predicted distribution (B, T) when
    asked. Gradients flow when the caller enables them."""
    size = completion_ids.size(1)
    logits = model(input_ids=torch.cat([context_ids, completion_ids], dim=1),
                   attention_mask=torch.cat([context_mask, completion_mask], dim=1),
                   logits_to_keep=size + 1).logits[:, :-1, :]
    logits = logits.float() / temperature
    logps = selective_log_softmax(logits, completion_ids)
    return logps, (entropy_from_logits(logits) if with_entropy else None)


class TemperatureScorer:
    """The scoring function the core's teachers call, (model, context ids, mask, answer ids, mask) -> (B, T) without
    gradient, at the temperature of the batch being scored (set before each update: an update takes only samples
    of one temperature)."""

    def __init__(self):
        self.temperature = 1.0

    @torch.no_grad()
    def __call__(self, model, context_ids, context_mask, completion_ids, completion_mask) -> torch.Tensor:
        return completion_logps(model, context_ids, context_mask, completion_ids, completion_mask,
                                self.temperature)[0]


@torch.no_grad()
def answer_logps(model, prompts: list[list[int]], answers: list[list[int]], temperature: float, *, pad_id: int,
                 device: torch.device) -> list[list[float]]:
    """The log-prob of each token of each answer after its prompt (one list per answer, its length)."""
    context_ids, context_mask = pad_rows(prompts, "left", pad_value=pad_id, device=device)
    answer_ids, answer_mask = pad_rows(answers, "right", pad_value=pad_id, device=device)
    logps, _ = completion_logps(model, context_ids, context_mask, answer_ids, answer_mask,
                                scoring_temperature(temperature))
    return [row[: len(answer)].tolist() for row, answer in zip(logps.cpu(), answers)]
