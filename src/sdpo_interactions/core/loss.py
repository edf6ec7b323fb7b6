"""One micro-batch's per-token loss: the student's pass with gradient (and, for the logit modes, the teacher's at
loss time), the objective of `distillation_mode`, and GRPOConfig's options on top of it. The trainer reduces the
result over the step (maths.aggregate_loss) and logs it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch

from sdpo_interactions.core.batch import SDPOBatch
from sdpo_interactions.core.distillation import LogitDistillation
from sdpo_interactions.core.maths import k3_kl
from sdpo_interactions.core.objectives import Objective, ObjectiveResult, ObjectiveSettings, get_objective

# (model, input_ids (B, L), attention_mask (B, L), completion length T) -> (log p(y_t) (B, T), entropies (B, T))
LogpPass = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LossParts:
    """What a micro-batch's loss is made of, for the reduction, the metrics and the token log."""

    per_token_loss: torch.Tensor  # (B, T), before masking and reduction
    result: ObjectiveResult
    reference: torch.Tensor  # (B, T): the student term of the signal, without gradient
    entropies: torch.Tensor  # (B, T)
    per_token_kl: Optional[torch.Tensor]  # (B, T): the KL penalty to the reference model, when beta > 0


@dataclass
class Regularisers:
    """GRPOConfig's options on top of any objective: the high-entropy token mask (`mask(entropies, completion_mask,
    quantile)` is TRL's) and the KL penalty to the reference model."""

    top_entropy_quantile: float
    high_entropy_mask: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    beta: float

    def apply(self, per_token_loss, batch: SDPOBatch, logps, entropies) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.top_entropy_quantile < 1.0:
            per_token_loss = per_token_loss * self.high_entropy_mask(entropies, batch.completion_mask,
                                                                     1 - self.top_entropy_quantile)
        if batch.importance_sampling_ratio is not None:  # vLLM's sampler against the trained weights
            per_token_loss = per_token_loss * batch.importance_sampling_ratio
        if self.beta == 0.0:
            return per_token_loss, None
        per_token_kl = k3_kl(batch.ref_logps, logps)
        return per_token_loss + self.beta * per_token_kl, per_token_kl


class MicroBatchLoss:
    """Prepares what the objective needs (`Objective.needs`) and turns it into the per-token loss."""

    def __init__(self, objective: Objective, settings: ObjectiveSettings, regularisers: Regularisers, *,
                 logp_pass: LogpPass, distillation: Optional[LogitDistillation], answers_from_policy: bool):
        self.objective = objective
        self.settings = settings
        self.regularisers = regularisers
        self.logp_pass = logp_pass
        self.distillation = distillation
        self.answers_from_policy = answers_from_policy

    @classmethod
    def for_trainer(cls, trainer) -> "MicroBatchLoss":
        """The loss of `trainer.args.distillation_mode`, with the trainer's teacher, TRL's log-prob pass and
        GRPOConfig's options as GRPOTrainer has read them."""
        objective, settings = get_objective(trainer.args.distillation_mode), ObjectiveSettings.from_config(trainer.args)
        distillation = None
        if objective.needs == "logits":
            distillation = LogitDistillation.for_trainer(trainer, partial(objective.token_divergence, settings=settings))

        def logp_pass(model, input_ids, attention_mask, length):
            return trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, length,
                                                              compute_entropy=True)

        regularisers = Regularisers(trainer.top_entropy_quantile, trainer.get_high_entropy_mask, trainer.beta)
        return cls(objective, settings, regularisers, logp_pass=logp_pass, distillation=distillation,
                   answers_from_policy=trainer.answers_from_policy)

    def __call__(self, model: torch.nn.Module, batch: SDPOBatch) -> LossParts:
        divergence = None
        if self.objective.needs == "logits":
            terms = self.distillation.terms(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                            batch.completion_mask, batch.teacher_ids, batch.teacher_mask)
            logps, entropies, divergence = terms.student_logps, terms.entropies, terms.divergence
            batch.teacher_logps = terms.teacher_logps  # the teacher at loss time, for the signal's metrics and log
        else:
            logps, entropies = self.logp_pass(model, torch.cat([batch.prompt_ids, batch.completion_ids], dim=1),
                                              torch.cat([batch.prompt_mask, batch.completion_mask], dim=1),
                                              batch.completion_ids.size(1))
        # On-policy, the detached grad-pass log-probs *are* the student term: no separate old-log-prob pass.
        reference = logps.detach() if batch.old_logps is None else batch.old_logps
        result = self.objective.loss(
            student_logps=logps, teacher_logps=batch.teacher_logps, reference_logps=reference,
            behaviour_logps=batch.old_logps if self.answers_from_policy else None, mask=batch.completion_mask,
            has_feedback=batch.has_feedback, sequence_baseline=batch.sequence_baseline, settings=self.settings,
            per_token_divergence=divergence,
        )
        per_token_loss, per_token_kl = self.regularisers.apply(result.per_token_loss, batch, logps, entropies)
        return LossParts(per_token_loss, result, reference, entropies, per_token_kl)
