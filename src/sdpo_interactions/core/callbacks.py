"""The cross-cutting parts of a run, as Trainer callbacks: stopping on a signal with a checkpoint, the run settings
that mark a complete checkpoint, logging the first and last steps of any run, and a one-line step summary."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from sdpo_interactions.run_files import write_run_settings

logger = logging.getLogger(__name__)


class GracefulStop(TrainerCallback):
    """The first SIGTERM or SIGINT ends the run after the current step, with a checkpoint; a second one kills.

    Processes can receive the signal at different steps, so the decision is reduced across them every step:
    all stop at the same step, and none waits forever in a collective the others have left.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested: Optional[int] = None
        self.stopped_at_step: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = signum
        logger.warning("%s received: stopping after this step with a checkpoint (send it again to kill)",
                       signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor(float(self.requested is not None), device=self.accelerator.device)
        if self.accelerator.reduce(flag, reduction="sum").item() > 0:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step

    @property
    def exit_code(self) -> int:
        """The shell's code for death by the signal (a process that did not receive it uses SIGTERM's)."""
        return 128 + (self.requested or signal.SIGTERM)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class RunSettingsWriter(TrainerCallback):
    """Writes the run settings into every checkpoint, as its last file: their presence marks a complete save.

    Trainer calls `on_save` right after `_save_checkpoint`, so model, optimizer and trainer state are on disk first.
    """

    def __init__(self, settings: Callable[[], dict]):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            write_run_settings(checkpoint, self.settings())


class LogFirstAndLastStep(TrainerCallback):
    """Logs the first and the last step whatever `logging_steps` says, so a short run still shows its metrics."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 or state.global_step >= state.max_steps:
            control.should_log = True


# (metric key, label, format) of the one-line step summary, in this order; a missing metric is left out.
SUMMARY_FIELDS = (
    ("loss", "loss", "{:.4f}"),
    ("sdpo/signal_mean", "signal", "{:+.4f}"),
    ("sdpo/signal_abs_mean", "|signal|", "{:.4f}"),
    ("sdpo/feedback_specificity", "specificity", "{:+.4f}"),
    ("user_sim/seconds", "user", "{:.1f} s"),
    ("grad_norm", "grad", "{:.3g}"),
    ("learning_rate", "lr", "{:.2e}"),
)


def step_summary(step: int, max_steps: int, logs: dict, step_seconds: Optional[float]) -> str:
    """One readable line for a logging step, instead of the metric dict printed into the progress bar."""
    parts = [f"step {step}/{max_steps}"]
    parts += [f"{label} {fmt.format(logs[key])}" for key, label, fmt in SUMMARY_FIELDS
              if isinstance(logs.get(key), (int, float))]
    if step_seconds is not None:
        parts.append(f"step {step_seconds:.1f} s")
    return " | ".join(parts)


class StepSummaryProgress(ProgressCallback):
    """transformers' progress bar, with a one-line summary of each logging step (the full metrics still go to
    the trackers and trainer_state.json)."""

    def __init__(self):
        super().__init__()
        self._last: Optional[tuple[int, float]] = None  # (step, time) of the previous logging step

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self._last = (state.global_step, time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs or "loss" not in logs:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        now = time.perf_counter()
        seconds = None
        if self._last is not None and state.global_step > self._last[0]:
            seconds = (now - self._last[1]) / (state.global_step - self._last[0])
        self._last = (state.global_step, now)
        self.training_bar.write(step_summary(state.global_step, state.max_steps, logs, seconds))
