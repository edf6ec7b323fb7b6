"""Keeps a teacher with state in step with training, as a Trainer callback: it follows the student after every
`teacher_sync_steps` optimizer steps, is written into every checkpoint, and is read back when a run resumes. (TRL
keeps no EMA state across a resume: its EMA teacher restarts from the initial weights.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from sdpo_interactions.core.teacher import Teacher

# In a folder of its own: loaders that take every *.safetensors file of a model folder as its weights (vLLM, for a
# model saved as one file) must not read the teacher's copy as the policy's.
TEACHER_STATE_NAME = "sdpo_teacher/state.safetensors"


class TeacherSync(TrainerCallback):
    """Updates the teacher in `on_step_end`, after the optimizer step. Its state is written by the trainer's
    `save_model` (inside every checkpoint's save, before the checkpoint is marked complete, and with the final
    model) and read back by `train` when it resumes."""

    def __init__(self, teacher: Teacher, sync_steps: int):
        self.teacher = teacher
        self.sync_steps = sync_steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.sync_steps == 0:
            self.teacher.update()

    def save(self, folder: str) -> None:
        """The teacher's state as one safetensors file in `folder`, written under a temporary name and renamed, so
        that a reader never sees half of it (it may be one model's size: no in-memory copy). Nothing for a teacher
        without state."""
        state = self.teacher.state_dict()
        if not state:
            return
        path = Path(folder) / TEACHER_STATE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        save_file({name: value.detach().contiguous() for name, value in state.items()}, str(partial))
        os.replace(partial, path)

    def restore(self, checkpoint: Optional[str]) -> None:
        """Take the teacher back from the checkpoint a run resumes from (nothing to do without one, or without
        teacher state)."""
        if not checkpoint or not self.teacher.state_dict():
            return
        path = Path(checkpoint) / TEACHER_STATE_NAME
        if not path.is_file():
            raise ValueError(f"{checkpoint} has no {TEACHER_STATE_NAME}: it was saved by a run with another "
                             "teacher_model_kind, so its teacher cannot be resumed")
        self.teacher.load_state_dict(load_file(path))
