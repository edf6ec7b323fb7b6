"""The cross-cutting parts of a run, as Trainer callbacks: stopping on a signal with a checkpoint, the run settings
that mark a complete checkpoint, logging the first and last steps of any run, and a one-line step summary."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from typing import Callable, Optional

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from sdpo_interactions.run_files import write_run_settings

logger = logging.getLogger(__name__)


def rng_states() -> dict:
    """The global RNG states transformers saves in a checkpoint (Python, NumPy, torch's CPU and CUDA generators)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


class GracefulStop(TrainerCallback):
    """The first SIGTERM or SIGINT ends the run after the current step, with a checkpoint; a second one kills at once.

    Processes can receive the signal at different steps, so the decision is reduced across them every step:
    all stop at the same step, and none waits forever in a collective the others have left.

    Python runs its signal handlers only when the main thread returns to the interpreter, which a process held in a
    collective (waiting for a rank that hangs) or in a long save does not do. So a thread watches the signals too
    (through Python's wakeup fd): the first one is noted and logged at once, and the second ends the process at
    once, with the shell's code for death by that signal, wherever the main thread is. The handler and the thread
    each see every signal and count their own, so either alone is enough.

    A run can also have to stop in the middle of a step (the user simulator fails for good). Its checkpoint must
    hold the RNG states a save at the end of the last step would have stored, so those are kept at every step's
    end (and after an evaluation there): `restore_rng_at_step_end` puts them back before that save.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested: Optional[int] = None
        self.stopped_at_step: Optional[int] = None
        self.rng_at_step_end: Optional[dict] = None
        self._previous: dict = {}
        self._previous_wakeup_fd = -1
        self._wakeup_write_fd: Optional[int] = None
        self._seen = {"handler": 0, "watcher": 0}
        self._lock = threading.RLock()  # reentrant: a signal can interrupt the main thread inside `_received`

    def _received(self, signum: int, seen_by: str) -> None:
        with self._lock:
            self._seen[seen_by] += 1
            if self._seen[seen_by] > 1:
                os.write(2, f"\n{signal.Signals(signum).name} again: exiting now, without a checkpoint\n".encode())
                os._exit(128 + signum)
            first = self.requested is None
            if first:
                self.requested = signum
        if first:
            logger.warning("%s received: stopping after this step with a checkpoint (send it again to kill)",
                           signal.Signals(signum).name)

    def _handle(self, signum, frame):
        self._received(signum, "handler")

    def _watch(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as signals:
            while received := signals.read(64):  # empty once `release` closes the pipe
                for signum in received:
                    if signum in self.SIGNALS:
                        self._received(signum, "watcher")

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return
        self._seen = {"handler": 0, "watcher": 0}
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._wakeup_write_fd = write_fd
        threading.Thread(target=self._watch, args=(read_fd,), name="graceful-stop", daemon=True).start()

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor(float(self.requested is not None), device=self.accelerator.device)
        if self.accelerator.reduce(flag, reduction="sum").item() > 0:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        self.rng_at_step_end = rng_states()

    def on_evaluate(self, args, state, control, **kwargs):
        self.rng_at_step_end = rng_states()  # an evaluation at the step's end comes before its save, and samples

    def restore_rng_at_step_end(self) -> None:
        if self.rng_at_step_end is not None:
            restore_rng_states(self.rng_at_step_end)

    @property
    def exit_code(self) -> int:
        """The shell's code for death by the signal (a process that did not receive it uses SIGTERM's)."""
        return 128 + (self.requested or signal.SIGTERM)

    def on_train_end(self, args, state, control, **kwargs):
        self.release()

    def release(self) -> None:
        """Give the signals back (also when training ends with an error, which skips `on_train_end`)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._wakeup_write_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            os.close(self._wakeup_write_fd)
            self._wakeup_write_fd = None


class RunSettingsWriter(TrainerCallback):
    """Writes the run settings at the top of the output folder when training ends, so that they describe the run as
    it finished (its global step, its interactions). Each checkpoint gets its own copy, the mark of a complete
    save, from `RunRecord.save_checkpoint`, which rewrites the top-level copy too."""

    def __init__(self, settings: Callable[[], dict]):
        self.settings = settings

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_run_settings(args.output_dir, self.settings())


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
