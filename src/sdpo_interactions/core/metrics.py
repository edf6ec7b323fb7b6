"""SDPO's metrics, reduced over processes into TRL's per-mode metric lists (which Trainer averages per logging step).

Names: `sdpo/*` the signal and the loss, `user_sim/*` the user, `hindsight/*` the teacher's contexts, `clip_ratio/*`
PPO's clipping, or the logit modes' importance-ratio cap (only when there is a behaviour policy to clip against).
"""

from __future__ import annotations

from typing import Optional

import torch

from sdpo_interactions.core.batch import SDPOBatch
from sdpo_interactions.core.maths import masked_mean
from sdpo_interactions.core.objectives import ObjectiveResult, ObjectiveSettings


class SDPOMetrics:
    """Appends reduced values to `store[mode][key]` (GRPOTrainer's `_metrics`)."""

    def __init__(self, accelerator, store: dict, settings: ObjectiveSettings):
        self.accelerator = accelerator
        self.store = store
        self.settings = settings

    def mean(self, mode: str, key: str, value: torch.Tensor) -> None:
        self.store[mode][key].append(self.accelerator.gather(value.detach()).nanmean().item())

    def generation(self, mode: str, *, feedback_tokens: list[int], has_feedback: torch.Tensor, shortened: list[bool],
                   teacher_lengths: torch.Tensor, simulator_seconds: Optional[float], simulator_metrics: dict) -> None:
        """`simulator_seconds` is None when the feedback was not asked for (logged conversations)."""
        device, gather, metrics = self.accelerator.device, self.accelerator.gather, self.store[mode]
        if simulator_seconds is not None:
            metrics["user_sim/seconds"].append(gather(torch.tensor(simulator_seconds, device=device)).max().item())
        metrics["user_sim/empty_feedback_frac"].append(1.0 - gather(has_feedback.float()).mean().item())
        tokens = torch.tensor(feedback_tokens, device=device, dtype=torch.float)
        metrics["user_sim/feedback_tokens"].append(gather(tokens).mean().item())
        metrics["hindsight/shortened_frac"].append(gather(torch.tensor(shortened, device=device).float()).mean().item())
        metrics["hindsight/teacher_prompt_tokens"].append(gather(teacher_lengths.float()).mean().item())
        for key, value in sorted(simulator_metrics.items()):
            # Fractions are averaged over processes; counts, tokens and costs are totals for the step.
            reduced = gather(torch.tensor(float(value), device=device))
            metrics[f"user_sim/{key}"].append((reduced.mean() if key.endswith("_frac") else reduced.sum()).item())

    def loss(self, mode: str, batch: SDPOBatch, result: ObjectiveResult, student: torch.Tensor,
             entropies: torch.Tensor) -> None:
        """The signal and loss metrics of one micro-batch; `student` (B, T) is the signal's student term. The
        sampled-token signal is logged in every mode (the logit modes gather the teacher's log-prob of y_t from
        their loss-time pass), the divergence in the logit modes, the advantage where there is one."""
        mask = batch.completion_mask
        with_feedback = mask * batch.has_feedback.long().unsqueeze(1)
        signal = result.signal
        self.mean(mode, "sdpo/signal_mean", masked_mean(signal, with_feedback))
        self.mean(mode, "sdpo/signal_abs_mean", masked_mean(signal.abs(), with_feedback))
        sequence_sums = (signal * with_feedback).sum(dim=1)
        self.mean(mode, "sdpo/sequence_log_ratio", masked_mean(sequence_sums, batch.has_feedback))
        self.mean(mode, "sdpo/teacher_logp", masked_mean(batch.teacher_logps, with_feedback))
        self.mean(mode, "sdpo/student_logp", masked_mean(student, with_feedback))
        if result.advantages is not None:
            self.mean(mode, "sdpo/advantage_abs_mean", masked_mean(result.advantages.abs(), with_feedback))
        else:
            self.mean(mode, "sdpo/divergence_mean", masked_mean(result.token_values, with_feedback))
        self.mean(mode, "entropy", masked_mean(entropies, mask))
        # The raw signal, never clipped, so that own and stranger feedback are measured alike.
        self.specificity(mode, batch, (batch.teacher_logps - student).abs(),
                         (batch.unrelated_teacher_logps - student).abs())
        if result.ratio is not None and result.advantages is not None:
            self.clipping(mode, result.ratio, result.advantages, mask)
        elif result.ratio is not None:
            capped = result.ratio > self.settings.distillation_is_clip
            self.mean(mode, "clip_ratio/is_capped_mean", masked_mean(capped.float(), with_feedback))

    def clipping(self, mode: str, ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> None:
        low = (ratio < 1 - self.settings.epsilon_low) & (advantages < 0)
        high = (ratio > 1 + self.settings.epsilon_high) & (advantages > 0)
        self.mean(mode, "clip_ratio/low_mean", masked_mean(low.float(), mask))
        self.mean(mode, "clip_ratio/high_mean", masked_mean(high.float(), mask))
        self.mean(mode, "clip_ratio/region_mean", masked_mean((low | high).float(), mask))

    def specificity(self, mode: str, batch: SDPOBatch, own_abs: torch.Tensor, unrelated_abs: torch.Tensor) -> None:
        """Mean |signal| under each re-scored sample's own feedback and under a stranger's, and their difference.

        Logged only for micro-batches that hold re-scored samples (on any process), so no window averages in zeros.
        """
        mask = batch.completion_mask
        rows = torch.tensor([s is not None for s in batch.stranger_feedback], device=mask.device)
        rescored = mask * rows.long().unsqueeze(1)
        values = torch.stack([rows.any().float(), masked_mean(own_abs, rescored), masked_mean(unrelated_abs, rescored)])
        gathered = self.accelerator.gather(values.detach().unsqueeze(0))  # (processes, [present, own, stranger])
        gathered = gathered[gathered[:, 0].bool(), 1:]
        if gathered.numel() == 0:
            return
        own, unrelated = gathered.mean(dim=0).tolist()
        self.store[mode]["sdpo/signal_abs_own"].append(own)
        self.store[mode]["sdpo/signal_abs_unrelated"].append(unrelated)
        self.store[mode]["sdpo/feedback_specificity"].append(own - unrelated)

    def rewards(self, mode: str, rewards: torch.Tensor, names: list[str]) -> None:
        """Reward functions' means, logged for monitoring: SDPO never trains on them."""
        for i, name in enumerate(names):
            self.store[mode][f"rewards/{name}/mean"].append(torch.nanmean(rewards[:, i]).item())

    def kl(self, mode: str, per_token_kl: Optional[torch.Tensor], mask: torch.Tensor) -> None:
        if per_token_kl is not None:
            self.mean(mode, "kl", masked_mean(per_token_kl, mask))
