"""SDPO's maths as pure functions of tensors: advantages from the hindsight signal, the sampled-token surrogate, and
how token losses are reduced over one optimizer step. Each is small enough to check by hand (tests/test_sdpo_math.py).

Shapes: B answers in a micro-batch, T completion tokens (right-padded), N answers of a whole generation batch.
"""

from __future__ import annotations

from typing import Optional

import torch

ADVANTAGE_BASELINES = ("sequence_mean", "leave_one_out", "none")
# What each loss type averages over, across one optimizer step (all micro-batches and processes):
#   grpo    - per answer: the mean over each answer's tokens, then the mean over answers (the paper's update)
#   dapo    - per token: the mean over every token of every answer
#   dr_grpo - the token sum divided by (answers x max_completion_length), a constant per answer
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (same shape, e.g. (B, T)), over `dim` or everything; an all-masked row
    gives 0, not NaN."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def leave_one_out_baseline(scores: torch.Tensor, valid: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """For each sample, the mean score of the *other* valid samples of its prompt group (0 if there are none).

    `scores` and `valid` are (N,), groups of `group_size` contiguous, as TRL's RepeatSampler lays them; returns (N,).
    """
    scores = scores.view(-1, group_size)
    valid = valid.view(-1, group_size).to(scores.dtype)
    total = (scores * valid).sum(dim=1, keepdim=True) - scores * valid
    count = valid.sum(dim=1, keepdim=True) - valid
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros_like(total)).flatten()


def clip_signal(signal: torch.Tensor, limit: Optional[float]) -> torch.Tensor:
    """The per-token signal (B, T) clipped to [-limit, limit]; `None` leaves it as it is."""
    return signal if limit is None else signal.clamp(min=-limit, max=limit)


def sdpo_advantages(
    signal: torch.Tensor,
    mask: torch.Tensor,
    *,
    baseline: str,
    has_feedback: torch.Tensor,
    sequence_baseline: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-token advantages (B, T) from the per-token hindsight signal `teacher - student` (B, T).

    - `sequence_mean`: subtract each sequence's own mean signal (the released research code's online default), so
      an answer is judged token against token rather than as a whole.
    - `leave_one_out`: subtract `sequence_baseline` (B,), the mean signal of the other answers to the same prompt.
    - `none`: the raw signal.
    Padding (`mask` (B, T) is 0) and samples without feedback (`has_feedback` (B,) is False) get exactly 0.
    """
    if baseline == "sequence_mean":
        advantages = signal - masked_mean(signal, mask, dim=1).unsqueeze(1)
    elif baseline == "leave_one_out":
        if sequence_baseline is None:
            raise ValueError("the leave_one_out baseline needs sequence_baseline")
        advantages = signal - sequence_baseline.unsqueeze(1)
    elif baseline == "none":
        advantages = signal
    else:
        raise ValueError(f"Unknown advantage baseline {baseline!r}; choose one of {', '.join(ADVANTAGE_BASELINES)}")
    return advantages * mask.to(signal.dtype) * has_feedback.to(signal.dtype).unsqueeze(1)


def ppo_clip_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
    delta: Optional[float] = None,
    sequence_level_ratio: bool = False,
    mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate with a *per-token* advantage: (per-token loss (B, T), importance ratio).

    `logps` (with gradient) and `old_logps` (the behaviour policy's) are (B, T). The ratio is (B, T), or with
    `sequence_level_ratio` the geometric mean over each sequence's `mask`ed tokens (GSPO), (B, 1).
    """
    log_ratio = logps - old_logps
    if sequence_level_ratio:
        log_ratio = masked_mean(log_ratio, mask, dim=1).unsqueeze(1)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    return -torch.min(ratio * advantages, clipped * advantages), ratio


def signal_weighted_nll(logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-token loss `-A_t * log p(y_t | x, y_<t)` (B, T) with the advantage held constant.

    This is the policy gradient on answers the policy itself sampled (PPO's surrogate at ratio 1 has this very value
    and gradient), and the authors' offline update on logged answers, which have no known behaviour policy.
    """
    return -advantages.detach() * logps


def k3_kl(ref_logps: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """The per-token KL estimate to a reference (B, T), `exp(ref - logp) - (ref - logp) - 1` (Schulman's k3, as
    GRPO uses it): non-negative, and 0 where the two agree."""
    return torch.exp(ref_logps - logps) - (ref_logps - logps) - 1


def first_tokens_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """`mask` (B, T) with each row's first `k` positions zeroed (completions are right-padded, so they start at 0)."""
    keep = torch.arange(mask.size(1), device=mask.device) >= k
    return mask * keep.to(mask.dtype).unsqueeze(0)


def derangement(n: int) -> list[int]:
    """A stranger for each of `n` samples: sample i is paired with i + 1 (the last with the first), never itself."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 samples, got {n}")
    return [(i + 1) % n for i in range(n)]


def loss_normalizer(loss_type: str, *, answers: float, tokens: float, max_completion_length: Optional[int]) -> float:
    """What the summed loss of one optimizer step is divided by, given the answers and tokens that carry feedback.

    Only answers with feedback count: a sample the user did not answer neither contributes nor dilutes the rest.
    """
    if loss_type == "grpo":
        total = answers
    elif loss_type == "dapo":
        total = tokens
    elif loss_type == "dr_grpo":
        total = answers * max_completion_length
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    return max(float(total), 1.0)


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, *, loss_type: str, normalizer: float) -> torch.Tensor:
    """One micro-batch's share of the step loss (a scalar): its summed contribution over the step's normaliser.

    `per_token_loss` and `mask` are (B, T); rows of `mask` are zero for answers without feedback. Because every
    micro-batch divides by the same step-wide normaliser, the gradient of a step is the same however its answers are
    split into micro-batches and processes. Under `grpo` an answer contributes the mean of its tokens' losses.
    """
    mask = mask.to(per_token_loss.dtype)
    if loss_type == "grpo":
        contribution = masked_mean(per_token_loss, mask, dim=1).sum()
    elif loss_type in LOSS_TYPES:
        contribution = (per_token_loss * mask).sum()
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    return contribution / normalizer


def micro_batch_normalizer(
    generation_normalizer: float, *, steps_per_generation: int, gradient_accumulation_steps: int, num_processes: int
) -> float:
    """What one micro-batch divides its summed loss by, so that one optimizer step's gradient is its loss summed over
    all micro-batches and processes, divided by the step's `loss_normalizer`.

    `generation_normalizer` is counted over a whole generation batch: `steps_per_generation` micro-batches on each of
    `num_processes` processes, of which one step takes `gradient_accumulation_steps`. The micro-batches' gradients
    are summed over the accumulation steps as they are (TRL 0.24 turns off transformers' own division by setting
    `compute_loss_func`), and DDP averages them over processes, hence the two factors.
    """
    return generation_normalizer * gradient_accumulation_steps / (steps_per_generation * num_processes)
