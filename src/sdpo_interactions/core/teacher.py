"""The teacher: who re-scores the answer y after reading the user's next message o. Chosen by `teacher_model_kind`
(TRL's experimental SDPO uses the same name and values).

- `live` (the paper's and the authors'): the policy being trained, as it is now. One network is student and teacher,
  so the signal is the model's own change of mind once it has read o.
- `base`: the initial policy, frozen. Under LoRA it costs nothing: the adapters are switched off for the teacher's
  passes. Otherwise a copy of the initial trainable weights is kept (one model's size).
- `ema`: an exponential moving average of the policy, teacher <- (1 - rate) teacher + rate student after every
  `teacher_sync_steps` optimizer steps (core/teacher_sync.py), starting from the initial policy. It keeps a copy of the
  trainable weights: under LoRA only the adapters (the initial adapter, so the first teacher is the base model, as
  B = 0), otherwise one model's size. It is saved in every checkpoint and restored on resume.

The teachers with their own weights do not build a second module: they swap their copy into the policy's trainable
parameters for the duration of a no-grad pass (`weights()`), so every pass runs the policy's own module (its
DDP wrapper, its gradient-checkpointing and attention settings) and nothing else has to be prepared.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from typing import Callable, Iterator, Optional

import torch
from accelerate.utils import DistributedType

logger = logging.getLogger(__name__)

# (model, context_ids (B, C), context_mask (B, C), completion_ids (B, T), completion_mask (B, T)) -> logps (B, T)
Scorer = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Teacher(abc.ABC):
    """Scores the answer tokens after the hindsight context, without gradient.

    `policy()` gives the trainer's model as the forward passes take it (possibly wrapped); `unwrap` gives the bare
    module, whose parameters and adapters a teacher reads.
    """

    def __init__(self, policy: Callable[[], torch.nn.Module], score: Scorer,
                 unwrap: Callable[[torch.nn.Module], torch.nn.Module]):
        self.policy = policy  # a callable: the trainer may wrap or replace its model after construction
        self.score = score
        self.unwrap = unwrap

    @contextlib.contextmanager
    def weights(self) -> Iterator[torch.nn.Module]:
        """The policy's module with this teacher's weights in place, for the duration of no-grad passes only."""
        yield self.policy()

    def logps(self, context_ids: torch.Tensor, context_mask: torch.Tensor, completion_ids: torch.Tensor,
              completion_mask: torch.Tensor) -> torch.Tensor:
        """log p_teacher(y_t | context, y_<t), shape (B, T), for left-padded contexts and right-padded answers."""
        with torch.no_grad(), self.weights() as model:
            return self.score(model, context_ids, context_mask, completion_ids, completion_mask)

    def parameter(self, name: str) -> torch.Tensor:
        """The teacher's value of the policy's parameter `name`, without gradient (the logit modes project the
        teacher's hidden states through its own output layer)."""
        return dict(self.unwrap(self.policy()).named_parameters())[name].detach()

    def update(self) -> None:
        """Follow the student after an optimizer step; only a teacher that tracks it does anything."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must keep to resume this teacher exactly; empty when the run's inputs recreate it."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {len(state)} tensors")


class LiveTeacher(Teacher):
    """The policy as it is at this step."""


class AdapterOffTeacher(Teacher):
    """The base model under a PEFT adapter: the adapters are switched off for the teacher's passes."""

    @contextlib.contextmanager
    def weights(self):
        with self.unwrap(self.policy()).disable_adapter():
            yield self.policy()


class ShadowTeacher(Teacher):
    """A copy of the policy's trainable parameters (taken when the trainer is built: the initial policy), swapped
    into the policy for the teacher's passes. With `update_rate` it follows the student as an exponential moving
    average; without, it stays the initial policy."""

    def __init__(self, policy, score, unwrap, update_rate: Optional[float] = None):
        super().__init__(policy, score, unwrap)
        self.update_rate = update_rate
        self.shadow = {name: p.detach().clone() for name, p in self._trainable()}
        if update_rate is not None and any(v.dtype in (torch.bfloat16, torch.float16) for v in self.shadow.values()):
            logger.warning("The EMA teacher is kept in the weights' 16-bit dtype: a change smaller than its "
                           "resolution (about 2^-8 of a weight in bfloat16) times 1/teacher_update_rate is lost at "
                           "every update, as in TRL. Under LoRA the adapters are float32 and this does not arise.")

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.unwrap(self.policy()).named_parameters() if p.requires_grad]

    def _value(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The shadow of `name`, moved once to where and how the parameter now lives (DeepSpeed places and casts
        the model after the trainer is built)."""
        value = self.shadow[name]
        if value.device != like.device or value.dtype != like.dtype:
            value = self.shadow[name] = value.to(device=like.device, dtype=like.dtype)
        return value

    @contextlib.contextmanager
    def weights(self):
        swapped = []
        try:
            for name, param in self._trainable():
                swapped.append((param, param.data))
                param.data = self._value(name, param)
            yield self.policy()
        finally:
            for param, data in swapped:
                param.data = data

    def parameter(self, name):
        if name in self.shadow:
            return self._value(name, super().parameter(name))
        return super().parameter(name)

    @torch.no_grad()
    def update(self) -> None:
        if self.update_rate is None:
            return
        for name, param in self._trainable():
            self._value(name, param).lerp_(param.detach(), self.update_rate)

    def state_dict(self):
        return self.shadow if self.update_rate is not None else {}

    @torch.no_grad()
    def load_state_dict(self, state):
        if self.update_rate is None:
            return super().load_state_dict(state)
        if state.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - state.keys()), sorted(state.keys() - self.shadow.keys())
            raise ValueError(f"the saved EMA teacher does not fit this policy's trainable parameters (missing "
                             f"{missing[:3]}, unexpected {extra[:3]}): resume with the run's own model and adapter")
        for name, value in state.items():
            self.shadow[name].copy_(value)


def is_peft(module: torch.nn.Module) -> bool:
    return callable(getattr(module, "disable_adapter", None))


def build_base(policy, score, unwrap, update_rate) -> Teacher:
    if is_peft(unwrap(policy())):
        return AdapterOffTeacher(policy, score, unwrap)
    return ShadowTeacher(policy, score, unwrap)


# teacher_model_kind -> builder of the teacher from the policy, the trainer's scoring function, the unwrapping
# function and teacher_update_rate.
TEACHERS: dict[str, Callable[..., Teacher]] = {
    "live": lambda policy, score, unwrap, update_rate: LiveTeacher(policy, score, unwrap),
    "base": build_base,
    "ema": ShadowTeacher,
}
# The kinds that keep a second copy of the trainable weights in the policy's own parameters' layout.
COPYING_KINDS = ("base", "ema")


def parameter_sharding(accelerator) -> Optional[str]:
    """The name of the parameter sharding a run uses (each process holds a shard of every weight), or None."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "FSDP"
    if kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        return "DeepSpeed ZeRO-3"
    return None


def build_teacher(kind: str, policy: Callable[[], torch.nn.Module], score: Scorer, *,
                  unwrap: Callable[[torch.nn.Module], torch.nn.Module], update_rate: float,
                  sharded: Optional[str] = None) -> Teacher:
    """The teacher of `kind`. `sharded` names the parameter sharding in use (DeepSpeed ZeRO-3, FSDP), under which a
    teacher that copies or swaps parameters cannot work: each process holds only a shard of them."""
    if kind not in TEACHERS:
        raise ValueError(f"Unknown teacher_model_kind {kind!r}; choose one of {', '.join(TEACHERS)}")
    teacher = TEACHERS[kind](policy, score, unwrap, update_rate)
    if sharded and isinstance(teacher, ShadowTeacher):
        raise ValueError(f"teacher_model_kind={kind} keeps a copy of the trainable weights, which {sharded} shards "
                         "across processes: use it with DDP or ZeRO-1/2, or under LoRA for `base`")
    return teacher
