"""The per-token objectives SDPO can optimise, by name: the `distillation_mode` option (TRL's experimental SDPO
uses the same name and values). Each objective is a pure function of the tensors it needs, and its registry entry
says what that is, so the trainer prepares exactly it:

- `sampled_token` (the paper's, Eq. 3; needs per-token log-probs): the hindsight log-ratio of each sampled token is
  its advantage in a policy gradient. With a behaviour policy (old log-probs from off-policy reuse) PPO's clipped
  surrogate corrects for it; without one (on-policy, or logged answers) the surrogate's ratio is 1 and the update is
  the signal-weighted log-likelihood.
- `topk_logits` and `full_logits` (need the student's and the teacher's next-token distributions at loss time): the
  divergence between them at every position of y (reverse KL by default, the paper's Eq. 2), over the student's top-k
  tokens plus a tail bucket, or over the whole vocabulary. In expectation over sampled answers the reverse KL's
  gradient is the sampled-token gradient (tests/test_objectives.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from sdpo_interactions.core.divergence import divergence, importance_ratio, topk_support
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
    distillation_topk: int = 50
    distillation_add_tail: bool = True
    distillation_alpha: float = 1.0
    distillation_is_clip: Optional[float] = None

    @classmethod
    def from_config(cls, args) -> "ObjectiveSettings":
        """From an OnlineSDPOConfig; PPO's clip range as GRPOTrainer reads it (epsilon_high defaults to epsilon)."""
        return cls(
            advantage_baseline=args.advantage_baseline, signal_clip=args.signal_clip, epsilon_low=args.epsilon,
            epsilon_high=args.epsilon if args.epsilon_high is None else args.epsilon_high, delta=args.delta,
            sequence_level_ratio=args.importance_sampling_level == "sequence", distillation_topk=args.distillation_topk,
            distillation_add_tail=args.distillation_add_tail, distillation_alpha=args.distillation_alpha,
            distillation_is_clip=args.distillation_is_clip,
        )


@dataclass
class ObjectiveResult:
    """What an objective returns for one micro-batch of B answers with T completion tokens."""

    per_token_loss: torch.Tensor  # (B, T), before masking and reduction
    token_values: torch.Tensor  # (B, T), the per-token value this mode optimises, as the token log records it
    signal: torch.Tensor  # (B, T), the sampled token's hindsight log-ratio teacher - student, never clipped
    advantages: Optional[torch.Tensor]  # (B, T), for the modes with an advantage
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
    per_token_divergence: Optional[torch.Tensor] = None,
) -> ObjectiveResult:
    """The sampled-token policy gradient with the per-token advantage `teacher - student`.

    `student_logps` (B, T) carry the gradient; `teacher_logps` (B, T) are log p(y_t | x, o, y_<t);
    `reference_logps` (B, T) are the student term of the signal (the policy when y was scored, no gradient);
    `behaviour_logps` (B, T) the policy y was sampled from, when it differs from the current one.
    """
    raw = teacher_logps - reference_logps
    signal = clip_signal(raw, settings.signal_clip)
    advantages = sdpo_advantages(signal, mask, baseline=settings.advantage_baseline, has_feedback=has_feedback,
                                 sequence_baseline=sequence_baseline)
    if behaviour_logps is None:
        return ObjectiveResult(signal_weighted_nll(student_logps, advantages), signal, raw, advantages, None)
    loss, ratio = ppo_clip_token_loss(
        student_logps, behaviour_logps, advantages, epsilon_low=settings.epsilon_low,
        epsilon_high=settings.epsilon_high, delta=settings.delta,
        sequence_level_ratio=settings.sequence_level_ratio, mask=mask,
    )
    return ObjectiveResult(loss, signal, raw, advantages, ratio)


def logit_distillation(
    *,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    behaviour_logps: Optional[torch.Tensor],
    settings: ObjectiveSettings,
    per_token_divergence: torch.Tensor,
    **_unused,
) -> ObjectiveResult:
    """The per-token divergence (B, T, with gradient) as the per-token loss, weighted by TRL's clipped importance
    ratio of the sampled token when `distillation_is_clip` is set and y came from an older policy
    (`behaviour_logps`). No advantage, baseline or signal clip: the divergence is the loss itself. The other keyword
    arguments of `sampled_token` are not read."""
    loss, ratio = per_token_divergence, None
    if behaviour_logps is not None and settings.distillation_is_clip is not None:
        ratio = importance_ratio(student_logps, behaviour_logps)
        loss = per_token_divergence * ratio.clamp(max=settings.distillation_is_clip)
    return ObjectiveResult(loss, per_token_divergence.detach(), teacher_logps - reference_logps, None, ratio)


def topk_divergence(student_logps: torch.Tensor, teacher_logps: torch.Tensor, settings: ObjectiveSettings
                    ) -> torch.Tensor:
    """(N, V) log-probs of both -> (N,): the divergence over the student's top-k, with or without the tail."""
    student, teacher = topk_support(student_logps, teacher_logps, k=settings.distillation_topk,
                                    add_tail=settings.distillation_add_tail)
    return divergence(student, teacher, alpha=settings.distillation_alpha)


def full_divergence(student_logps: torch.Tensor, teacher_logps: torch.Tensor, settings: ObjectiveSettings
                    ) -> torch.Tensor:
    """(N, V) log-probs of both -> (N,): the divergence over the whole vocabulary."""
    return divergence(student_logps, teacher_logps, alpha=settings.distillation_alpha)


@dataclass(frozen=True)
class Objective:
    """A `distillation_mode`: what it reads, and the pure functions that turn it into a per-token loss."""

    needs: str  # "logps": y's per-token log-probs, the teacher's at generation time; "logits": both distributions
    loss: Callable[..., ObjectiveResult]  # takes the keyword arguments of `sampled_token`
    # For "logits": (student (N, V), teacher (N, V) log-probs, settings) -> the per-position divergence (N,)
    token_divergence: Optional[Callable[[torch.Tensor, torch.Tensor, ObjectiveSettings], torch.Tensor]] = None


OBJECTIVES: dict[str, Objective] = {
    "sampled_token": Objective("logps", sampled_token),
    "topk_logits": Objective("logits", logit_distillation, topk_divergence),
    "full_logits": Objective("logits", logit_distillation, full_divergence),
}
LOGIT_MODES = tuple(name for name, objective in OBJECTIVES.items() if objective.needs == "logits")


def value_label(name: str, settings: ObjectiveSettings) -> str:
    """What `name` optimises per token, in words: the colour scale's label when the token log is drawn."""
    if name == "sampled_token":
        clip = "" if settings.signal_clip is None else f", clipped to ±{settings.signal_clip:g}"
        return f"signal = teacher − student log-prob of the sampled token{clip}"
    alpha = settings.distillation_alpha
    kind = {1.0: "reverse KL(student ‖ teacher)", 0.0: "forward KL(teacher ‖ student)"}.get(
        alpha, f"generalised JSD (alpha {alpha:g})")
    if name == "full_logits":
        return f"{kind} over the whole vocabulary"
    support = "+ the tail" if settings.distillation_add_tail else "renormalised"
    return f"{kind} over the student's top-{settings.distillation_topk} tokens {support}"


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown distillation_mode {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
