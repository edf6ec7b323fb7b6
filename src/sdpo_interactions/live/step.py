"""One SDPO update on a batch of live samples, with the core's parts: the hindsight contexts (`ChatContexts`), the
teacher (`teacher_model_kind`), the objective (`distillation_mode`) and the loss reduction of `core.maths`.

y is the answer exactly as it was sampled (its token ids), and its logged sampling log-probs are the behaviour
policy: an update trains on answers that an earlier adapter version wrote, and the clipped importance ratio of the
sampled-token objective corrects for the difference. Then the monitors' measurements on the updated adapter.

Shapes: B samples, P prompt tokens (left-padded), T answer tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from sdpo_interactions.core.batch import pad_rows
from sdpo_interactions.core.distillation import LogitDistillation, OutputHead
from sdpo_interactions.core.hindsight import ChatContexts
from sdpo_interactions.core.maths import aggregate_loss, first_tokens_mask, loss_normalizer, masked_mean
from sdpo_interactions.core.objectives import ObjectiveSettings, get_objective
from sdpo_interactions.core.scoring import HindsightScorer
from sdpo_interactions.core.teacher import build_teacher
from sdpo_interactions.live.logps import TemperatureScorer, completion_logps
from sdpo_interactions.live.monitors import mean, ratio, repeated_ngram_share
from sdpo_interactions.live.store import ClaimedSample
from sdpo_interactions.sampling import Sampling, generate_exactly

TEACHER_STATE_NAME = "teacher_state.safetensors"


@dataclass
class UpdateBatch:
    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T): y as sampled
    completion_mask: torch.Tensor  # (B, T)
    behaviour_logps: torch.Tensor  # (B, T): logged at sampling time
    has_feedback: torch.Tensor  # (B,) bool
    temperature: float  # every answer of an update was sampled (and is scored) at this temperature
    messages: list[list[dict[str, str]]]  # B prompts x
    feedback: list[str]  # B follow-ups o


class SDPOUpdate:
    """Scores, differentiates and measures one batch on the learner's model (whose active adapter is trained)."""

    def __init__(self, model, contexts: ChatContexts, args, *, pad_id: int, device: torch.device):
        self.model, self.contexts, self.args, self.pad_id, self.device = model, contexts, args, pad_id, device
        self.objective = get_objective(args.distillation_mode)
        self.settings = ObjectiveSettings(
            advantage_baseline=args.advantage_baseline, signal_clip=args.signal_clip, epsilon_low=args.epsilon,
            epsilon_high=args.epsilon if args.epsilon_high is None else args.epsilon_high, delta=args.delta,
            sequence_level_ratio=False, distillation_topk=args.distillation_topk,
            distillation_add_tail=args.distillation_add_tail, distillation_alpha=args.distillation_alpha,
            distillation_is_clip=args.distillation_is_clip)
        self.scorer = TemperatureScorer()
        self.teacher = build_teacher(args.teacher_model_kind, lambda: self.model, self.scorer, unwrap=_same,
                                     update_rate=args.teacher_update_rate)
        self.hindsight = HindsightScorer(contexts, self.teacher, self._pad)
        self.distillation = None
        if self.objective.needs == "logits":
            self.distillation = LogitDistillation(
                self.teacher, partial(self.objective.token_divergence, settings=self.settings),
                head=OutputHead.of(model), temperature=1.0, chunk_size=args.distillation_chunk_size, unwrap=_same)

    def _pad(self, rows, side: str, dtype=None):
        value = 0.0 if dtype is not None and dtype.is_floating_point else self.pad_id
        return pad_rows(rows, side, pad_value=value, device=self.device, dtype=dtype)

    def batch(self, samples: list[ClaimedSample]) -> UpdateBatch:
        prompts = self.contexts.token_ids([self.contexts.render(s.prompt) for s in samples])
        prompt_ids, prompt_mask = self._pad(prompts, "left")
        completion_ids, completion_mask = self._pad([s.token_ids for s in samples], "right")
        behaviour, _ = self._pad([s.logps for s in samples], "right", dtype=torch.float32)
        has_feedback = torch.tensor([bool(s.feedback.strip()) for s in samples], device=self.device)
        return UpdateBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, behaviour, has_feedback,
                           samples[0].temperature, [s.prompt for s in samples], [s.feedback for s in samples])

    def _scores(self, batch: UpdateBatch):
        """The teacher's and the student's log-probs of y (B, T), the student's with gradient, the logit modes'
        per-token divergence (or None), and the stranger re-scoring. Every teacher pass runs before the student's,
        so a teacher with its own weights never swaps them inside the student's graph."""
        self.scorer.temperature = batch.temperature
        texts = [self.contexts.teacher_context(m, o)[0] for m, o in zip(batch.messages, batch.feedback)]
        completion = (batch.completion_ids, batch.completion_mask)
        self.model.eval()
        if self.distillation is None:
            teacher, _ = self.hindsight.teacher_pass(texts, *completion)
        else:
            teacher = None  # scored at loss time, with the distributions
        strangers = self.hindsight.stranger_pass(batch.messages, batch.feedback, batch.has_feedback.tolist(),
                                                 *completion, teacher, limit=len(batch.messages))
        self.model.train()
        if self.distillation is None:
            student, _ = completion_logps(self.model, batch.prompt_ids, batch.prompt_mask, *completion,
                                          batch.temperature)
            return teacher, student, None, strangers
        self.distillation.temperature = batch.temperature
        terms = self.distillation.terms(self.model, batch.prompt_ids, batch.prompt_mask, *completion,
                                        *self.hindsight.context_ids(texts))
        return terms.teacher_logps, terms.student_logps, terms.divergence, strangers

    def step(self, batch: UpdateBatch, optimizer: torch.optim.Optimizer) -> dict:
        """The objective on the batch and one optimizer step; returns the update's metrics."""
        teacher, student, divergence, strangers = self._scores(batch)
        result = self.objective.loss(
            student_logps=student, teacher_logps=teacher, reference_logps=student.detach(),
            behaviour_logps=batch.behaviour_logps, mask=batch.completion_mask, has_feedback=batch.has_feedback,
            sequence_baseline=None, settings=self.settings, per_token_divergence=divergence)
        loss_mask = first_tokens_mask(batch.completion_mask * batch.has_feedback.long().unsqueeze(1),
                                      self.args.ignore_first_tokens)
        normalizer = loss_normalizer(self.args.loss_type, answers=(loss_mask.sum(dim=1) > 0).sum().item(),
                                     tokens=loss_mask.sum().item(), max_completion_length=loss_mask.size(1))
        loss = aggregate_loss(result.per_token_loss, loss_mask, loss_type=self.args.loss_type, normalizer=normalizer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), "samples": len(batch.messages),
                **self._signal_metrics(batch, result, student.detach(), teacher, *strangers)}

    def _signal_metrics(self, batch, result, student, teacher, strangers, unrelated) -> dict:
        mask = batch.completion_mask
        metrics = {"signal_mean": masked_mean(result.signal, mask).item(),
                   "value_mean": masked_mean(result.token_values, mask).item()}
        if result.ratio is not None:
            ratio_values = result.ratio.expand_as(mask)[mask.bool()]
            metrics.update(ratio_mean=ratio_values.mean().item(), ratio_min=ratio_values.min().item(),
                           ratio_max=ratio_values.max().item())
        rows = torch.tensor([s is not None for s in strangers], device=mask.device)
        if rows.any():
            rescored = mask * rows.long().unsqueeze(1)
            own = masked_mean((teacher - student).abs(), rescored).item()
            metrics["feedback_specificity"] = own - masked_mean((unrelated - student).abs(), rescored).item()
        return metrics

    def follow_student(self, version: int) -> dict[str, torch.Tensor]:
        """The update passed its monitors and becomes `version`: a teacher that follows the student does so now if
        the version falls on `teacher_sync_steps` (a rejected update never moves it; version numbers survive a
        restart, so the rhythm does too); returns the teacher's state to keep with the version (empty for a teacher
        without state)."""
        if version % self.args.teacher_sync_steps == 0:
            self.teacher.update()
        return {k: v.detach().to("cpu").contiguous() for k, v in self.teacher.state_dict().items()}

    def restore_teacher(self, folder: str) -> None:
        """The teacher's state as a version kept it (a version without one leaves the teacher as built)."""
        path = Path(folder) / TEACHER_STATE_NAME
        if path.is_file():
            self.teacher.load_state_dict(load_file(str(path)))

    @torch.no_grad()
    def entropy_ratio(self, batch: UpdateBatch) -> Optional[float]:
        """Mean token entropy on the batch's answers: the updated adapter over the base model."""
        context = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
        _, updated = completion_logps(self.model, *context, batch.temperature, with_entropy=True)
        with self.model.disable_adapter():
            _, base = completion_logps(self.model, *context, batch.temperature, with_entropy=True)
        mask = batch.completion_mask
        return ratio(masked_mean(updated, mask).item(), masked_mean(base, mask).item())

    @torch.no_grad()
    def probe(self, batch: UpdateBatch, seed: int) -> dict[str, Optional[float]]:
        """Answers to the batch's prompts from the updated adapter and from the base model, sampled with one seed:
        the ratio of their mean lengths and the rise of their repetition."""
        config = Sampling(temperature=self.args.temperature, top_p=self.args.top_p).generation_config(
            self.args.monitor_probe_tokens, self.pad_id, self.contexts.tokenizer.eos_token_id)
        inputs = {"input_ids": batch.prompt_ids, "attention_mask": batch.prompt_mask}
        answers = {}
        for name in ("updated", "base"):
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                if name == "base":
                    with self.model.disable_adapter():
                        out = generate_exactly(self.model, inputs, config)
                else:
                    out = generate_exactly(self.model, inputs, config)
            answers[name] = [self._until_eos(row) for row in out[:, batch.prompt_ids.size(1):].tolist()]
        lengths = {k: mean([len(a) for a in v]) for k, v in answers.items()}
        repetition = {k: mean([repeated_ngram_share(a) for a in v]) for k, v in answers.items()}
        return {"length_ratio": ratio(lengths["updated"], lengths["base"]),
                "repetition_increase": repetition["updated"] - repetition["base"]}

    def _until_eos(self, tokens: list[int]) -> list[int]:
        eos = self.contexts.tokenizer.eos_token_id
        return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def _same(model):
    return model
