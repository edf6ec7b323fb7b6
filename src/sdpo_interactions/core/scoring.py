"""The teacher side of a generation batch: the teacher pass over the answers after their hindsight contexts, and the
stranger re-scoring behind the feedback-specificity metric."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from sdpo_interactions.core.hindsight import ChatContexts
from sdpo_interactions.core.specificity import choose_strangers
from sdpo_interactions.core.teacher import Teacher


class HindsightScorer:
    """Tokenizes contexts, pads them (`pad(rows, side)` -> ids, mask) and asks the teacher."""

    def __init__(self, contexts: ChatContexts, teacher: Teacher, pad: Callable):
        self.contexts = contexts
        self.teacher = teacher
        self.pad = pad

    def context_ids(self, teacher_texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The hindsight contexts as left-padded ids and mask (B, C)."""
        return self.pad(self.contexts.token_ids(teacher_texts), "left")

    def teacher_pass(self, teacher_texts: list[str], completion_ids: torch.Tensor, completion_mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_teacher(y_t | x, o, y_<t) (B, T) over the very same completion tokens, and the teacher contexts'
        lengths (B,), so the metrics need not tokenize them again."""
        teacher_ids, teacher_mask = self.context_ids(teacher_texts)
        return self.teacher.logps(teacher_ids, teacher_mask, completion_ids, completion_mask), teacher_mask.sum(dim=1)

    def stranger_pass(self, messages: list, feedback: list[str], has_feedback: list[bool],
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                      teacher_logps: Optional[torch.Tensor], *, limit: int) -> tuple[list[Optional[str]], torch.Tensor]:
        """Up to `limit` answers scored again under another sample's feedback.

        Returns, per row, the stranger's feedback or None, and the teacher log-probs (B, T) under it (zeros for
        other rows). A stranger whose feedback reads the same as the sample's own gives the same context, so its
        log-probs are the sample's own `teacher_logps` (B, T), and the specificity is exactly 0 when all feedback
        agrees; without them (the logit modes score the teacher at loss time) that row is scored again too.
        """
        strangers = choose_strangers(feedback, has_feedback, limit)
        unrelated = torch.zeros(completion_ids.shape, device=completion_ids.device)
        same = [i for i, s in enumerate(strangers) if s is not None and s == feedback[i] and teacher_logps is not None]
        rescore = [i for i, s in enumerate(strangers) if s is not None and i not in same]
        for i in same:
            unrelated[i] = teacher_logps[i]
        if rescore:
            texts = [self.contexts.teacher_context(messages[i], strangers[i])[0] for i in rescore]
            unrelated[rescore] = self.teacher_pass(texts, completion_ids[rescore], completion_mask[rescore])[0].float()
        return strangers, unrelated
