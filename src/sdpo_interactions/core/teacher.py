"""The teacher: who re-scores the answer y after reading the user's next message o. Chosen by `teacher_model_kind`
(TRL's experimental SDPO uses the same name).

- `live` (the paper's): the policy being trained, as it is now. One network is student and teacher, so the signal
  is the model's own change of mind once it has read o.

A teacher that differs from the policy (an EMA of it, or the frozen initial policy) is a new class here and a
registry entry; if it has state to keep, it provides `state_dict`/`load_state_dict` for the checkpoints.
"""

from __future__ import annotations

import abc
from typing import Callable

import torch

# (model, context_ids (B, C), context_mask (B, C), completion_ids (B, T), completion_mask (B, T)) -> logps (B, T)
Scorer = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Teacher(abc.ABC):
    """Scores the answer tokens after the hindsight context, without gradient."""

    @abc.abstractmethod
    def logps(self, context_ids: torch.Tensor, context_mask: torch.Tensor, completion_ids: torch.Tensor,
              completion_mask: torch.Tensor) -> torch.Tensor:
        """log p_teacher(y_t | context, y_<t), shape (B, T), for left-padded contexts and right-padded answers."""


class LiveTeacher(Teacher):
    """The policy as it is at this step."""

    def __init__(self, policy: Callable[[], torch.nn.Module], score: Scorer):
        self.policy = policy  # a callable: the trainer may wrap or replace its model after construction
        self.score = score

    def logps(self, context_ids, context_mask, completion_ids, completion_mask):
        return self.score(self.policy(), context_ids, context_mask, completion_ids, completion_mask)


# teacher_model_kind -> builder of the teacher from the policy and the trainer's scoring function.
TEACHERS: dict[str, Callable[[Callable[[], torch.nn.Module], Scorer], Teacher]] = {"live": LiveTeacher}


def build_teacher(kind: str, policy: Callable[[], torch.nn.Module], score: Scorer) -> Teacher:
    if kind not in TEACHERS:
        raise ValueError(f"Unknown teacher_model_kind {kind!r}; choose one of {', '.join(TEACHERS)}")
    return TEACHERS[kind](policy, score)
