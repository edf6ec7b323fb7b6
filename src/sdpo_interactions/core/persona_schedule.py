"""A persona schedule as a Trainer callback: before each optimizer step the user gets the persona of that step
(users/style_schedule.py), so every backend (a local model, a served one, Claude) switches at the same step boundary
on every process, and a resumed run picks up the persona of the step it resumes at."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from sdpo_interactions.users.style_schedule import StyleSchedule

logger = logging.getLogger(__name__)


class PersonaScheduleCallback(TrainerCallback):
    """Sets the user's persona at the start of training and of each step, from `state.global_step`.

    `on_step_begin` runs before the step's first micro-batch, which is where TRL generates the step's answers and the
    user replies to them; every process runs it, so all ranks switch together.
    """

    def __init__(self, schedule: StyleSchedule, user_simulator):
        if not callable(getattr(user_simulator, "set_persona", None)):
            raise TypeError(f"a persona schedule needs a user with set_persona(style, persona); "
                            f"{type(user_simulator).__name__} has none (subclass sdpo_interactions.UserSimulator)")
        self.schedule = schedule
        self.user = user_simulator

    def _apply(self, step: int) -> None:
        phase = self.schedule.phase_at(step)
        if (self.user.style, self.user.persona) != (phase.style, phase.persona):
            previous = self.user.style
            self.user.set_persona(phase.style, phase.persona)
            logger.info("persona schedule: from step %d on the user is %s (was %s)", step + 1, phase.style, previous)

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step)
