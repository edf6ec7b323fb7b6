"""The per-token objectives SDPO can optimise, by name: the `distillation_mode` option (TRL's experimental SDPO
uses the same name). Each objective is a pure function of the tensors it needs, so a new one is a function and a
registry entry, tested by hand like the maths it is built from.

- `sampled_token` (the paper's, Eq. 3): the hindsight log-ratio of each sampled token is its advantage in a policy
  gradient. With a behaviour policy (old log-probs from off-policy reuse, or logged sampling log-probs) PPO's
  clipped surrogate corrects for it; without one (on-policy, or logged answers) the surrogate's ratio is 1 and the
  update is the signal-weighted log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from sdpo_interactions.core.maths import clip_signal, ppo_clip_token_loss, sdpo_advantages, signal_weighted_nll


@dataclass(frozen=True)
class ObjectiveSettings:
    """The config values an objective reads, gathered once so that objectives never see the trainer."""

    advantage_baseline: str
    signal_clip: Optional[float]
    epsilon_low: float
    epsilon_high: float
    delta: Optional[float]
    sequence_level_ratio: bool


@dataclass
class ObjectiveResult:
    """What an objective returns for one micro-batch of B answers with T completion tokens."""

    per_token_loss: torch.Tensor  # (B, T), before masking and reduction
    token_values: torch.Tensor  # (B, T), the per-token value this mode optimises, as the token log records it
    advantages: torch.Tensor  # (B, T)
    ratio: Optional[torch.Tensor]  # (B, T) or (B, 1): the importance ratio, None when there is no behaviour policy


def sampled_token(
    *,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    behaviour_logps: Optional[torch.Tensor],
    mask: torch.Tensor,
    has_feedback: torch.Tensor,
    sequence_baseline: Optional[torch.Tensor],
    settings: ObjectiveSettings,
) -> ObjectiveResult:
    """The sampled-token policy gradient with the per-token advantage `teacher - student`.

    `student_logps` (B, T) carry the gradient; `teacher_logps` (B, T) are log p(y_t | x, o, y_<t);
    `reference_logps` (B, T) are the student term of the signal (the policy when y was scored, no gradient);
    `behaviour_logps` (B, T) the policy y was sampled from, when it differs from the current one.
    """
    signal = clip_signal(teacher_logps - reference_logps, settings.signal_clip)
    advantages = sdpo_advantages(signal, mask, baseline=settings.advantage_baseline, has_feedback=has_feedback,
                                 sequence_baseline=sequence_baseline)
    if behaviour_logps is None:
        return ObjectiveResult(signal_weighted_nll(student_logps, advantages), signal, advantages, None)
    loss, ratio = ppo_clip_token_loss(
        student_logps, behaviour_logps, advantages, epsilon_low=settings.epsilon_low,
        epsilon_high=settings.epsilon_high, delta=settings.delta,
        sequence_level_ratio=settings.sequence_level_ratio, mask=mask,
    )
    return ObjectiveResult(loss, signal, advantages, ratio)


# distillation_mode -> the objective. Every entry takes the keyword arguments of `sampled_token`.
OBJECTIVES: dict[str, Callable[..., ObjectiveResult]] = {"sampled_token": sampled_token}


def get_objective(name: str) -> Callable[..., ObjectiveResult]:
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown distillation_mode {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
