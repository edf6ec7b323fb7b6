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

    def teacher_pass(self, teacher_texts: list[str], completion_ids: torch.Tensor, completion_mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_teacher(y_t | x, o, y_<t) (B, T) over the very same completion tokens, and the teacher contexts'
        lengths (B,), so the metrics need not tokenize them again."""
        teacher_ids, teacher_mask = self.pad(self.contexts.token_ids(teacher_texts), "left")
        return self.teacher.logps(teacher_ids, teacher_mask, completion_ids, completion_mask), teacher_mask.sum(dim=1)

    def stranger_pass(self, messages: list, feedback: list[str], has_feedback: list[bool],
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor, teacher_logps: torch.Tensor, *,
                      limit: int) -> tuple[list[Optional[str]], torch.Tensor]:
        """Up to `limit` answers scored again under another sample's feedback.

        Returns, per row, the stranger's feedback or None, and the teacher log-probs (B, T) under it (zeros for
        other rows). A stranger whose feedback reads the same as the sample's own gives the same context, so its
        log-probs are the sample's own, and the specificity is exactly 0 when all feedback agrees.
        """
        strangers = choose_strangers(feedback, has_feedback, limit)
        unrelated = torch.zeros_like(teacher_logps)
        rescore = [i for i, s in enumerate(strangers) if s is not None and s != feedback[i]]
        for i, stranger in enumerate(strangers):
            if stranger is not None and stranger == feedback[i]:
                unrelated[i] = teacher_logps[i]
        if rescore:
            texts = [self.contexts.teacher_context(messages[i], strangers[i])[0] for i in rescore]
            unrelated[rescore], _ = self.teacher_pass(texts, completion_ids[rescore], completion_mask[rescore])
        return strangers, unrelated
