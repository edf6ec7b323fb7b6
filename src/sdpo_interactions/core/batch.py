"""The typed objects that carry samples between SDPO's stages: the answers to score, and the scored batch the loss
reads. A new objective adds a field here, not a string key read in five places.

Shapes: B answers, P student-prompt tokens (left-padded), C hindsight-context tokens (left-padded), T completion
tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

import torch
from trl.trainer.utils import pad


def pad_rows(rows: Sequence[Sequence], side: str, *, pad_value, device, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids (or floats) as one `side`-padded tensor (B, L) and its mask (B, L)."""
    tensors = [torch.tensor(r, device=device, dtype=dtype) for r in rows]
    masks = [torch.ones(len(r), device=device, dtype=torch.long) for r in rows]
    return pad(tensors, padding_value=pad_value, padding_side=side), pad(masks, padding_value=0, padding_side=side)


@dataclass
class Answers:
    """The answers y to prompts x, before anyone has reacted to them: sampled by the policy, or logged."""

    prompt_ids: torch.Tensor  # (B, P): the student's context x, exactly as y follows it
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T)
    completion_mask: torch.Tensor  # (B, T): 0 after EOS, and for a whole answer that was cut off when masked
    completion_ids_list: list[list[int]]  # B unpadded rows, as the reward functions take them
    completion_text: list[str]  # B answers, special tokens removed
    student_context: list[str]  # B rendered student contexts (after any truncation)
    sampling_logps: Optional[list[list[float]]] = None  # B rows: log-probs the generator sampled with (vLLM)


@dataclass
class SDPOBatch:
    """One generation batch after the user's feedback and the teacher pass: everything the loss needs.

    TRL buffers, shuffles and splits a generation batch as a dict (`GRPOTrainer._prepare_inputs`), so the batch
    crosses that boundary as `to_trl()` and comes back with `from_trl()`; the field names are the only keys.
    """

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, T)
    completion_mask: torch.Tensor  # (B, T)
    # (B, T): log p(y_t | x, o, y_<t). The logit modes score the teacher at loss time and fill it in there.
    teacher_logps: Optional[torch.Tensor]
    has_feedback: torch.Tensor  # (B,) bool: False for an empty or failed reply, which the loss leaves out
    loss_normalizer: torch.Tensor  # (): this generation batch's normaliser (maths.loss_normalizer)
    generation_step: torch.Tensor  # (B,): the optimizer step at which the sample was generated
    request_text: list[str]  # B
    completion_text: list[str]  # B
    feedback_text: list[str]  # B: the user's next message o ("" when there is none)
    feedback_style: list[Optional[str]]  # B: the persona that wrote o (None: a logged user, no persona)
    student_context: list[str]  # B
    teacher_context: list[str]  # B: the hindsight context, exactly as y follows it in the teacher pass
    # At logging steps, a few answers scored again under another sample's feedback (the specificity metric).
    stranger_feedback: list[Optional[str]]  # B: that feedback, or None for rows not re-scored
    unrelated_teacher_logps: torch.Tensor  # (B, T): zeros for rows not re-scored
    teacher_ids: Optional[torch.Tensor] = None  # (B, C): the hindsight contexts, for the logit modes' loss-time pass
    teacher_mask: Optional[torch.Tensor] = None  # (B, C)
    old_logps: Optional[torch.Tensor] = None  # (B, T): the policy at generation time, when a step reuses the batch
    importance_sampling_ratio: Optional[torch.Tensor] = None  # (B, T): vLLM's sampler vs the trained weights
    ref_logps: Optional[torch.Tensor] = None  # (B, T): the reference model, for the KL penalty (beta > 0)
    sequence_baseline: Optional[torch.Tensor] = None  # (B,): the leave-one-out baseline

    def to_trl(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_trl(cls, inputs: dict[str, Any]) -> "SDPOBatch":
        return cls(**inputs)
