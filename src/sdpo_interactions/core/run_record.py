"""The run's own record beside the Trainer's: the interactions seen (the x-axis of the paper's win-rate curves), the
run settings at the top of the output folder, what a resume must restore or trim so that it continues exactly, and
how a checkpoint is saved so that a kill at any moment never leaves one that looks complete but is not.

A checkpoint is saved in this order: transformers' files (model, optimizer, scheduler, every rank's RNG state,
trainer state) and the token log's open window, then, once every rank is done, the run settings that mark it
complete, and only then the rotation that deletes the oldest ones (each losing its mark first). transformers itself
rotates before its callbacks run, so a kill during the deletion left the old checkpoint marked complete without its
optimizer, and the new one unmarked (issue 22).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from transformers import TrainerState

from sdpo_interactions.core.token_log import TokenLog
from sdpo_interactions.run_files import (
    disk_full_named,
    format_bytes,
    latest_complete_checkpoint,
    read_run_settings,
    unmark_checkpoint,
    warn_if_short_of_space,
    write_run_settings,
)
from sdpo_interactions.schedule import ScheduleError, schedule_of
from sdpo_interactions.users.base import UserSimulatorError

logger = logging.getLogger(__name__)


def _restore_cpu_index(storage, location: str):
    """accelerate gives each process of a multi-process CPU run the device `cpu:<rank>`, which transformers hands to
    torch.load as the map_location of the optimizer state when such a run resumes; torch restores only `cpu`."""
    return storage if location.startswith("cpu:") else None


torch.serialization.register_package(11, lambda storage: None, _restore_cpu_index)


def checkpoint_bytes(model) -> tuple[int, int]:
    """About what one checkpoint takes: (the weights save_model writes, a PEFT model's adapter alone; the optimizer
    state, two fp32 moments per trainable parameter as Adam keeps them)."""
    parameters = list(model.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    saved = trainable if hasattr(model, "peft_config") else parameters
    return sum(p.numel() * p.element_size() for p in saved), 8 * sum(p.numel() for p in trainable)


def checkpoints_at_once(args, samples: Optional[int], first_step: int) -> int:
    """How many checkpoints this run will write at most while the ones written before stay: those its schedule
    saves after `first_step`, at most `save_total_limit` plus the one being written; at least one (a stop by a
    signal saves one whatever the schedule)."""
    try:
        planned = schedule_of(args, samples).checkpoints if samples is not None else None
    except ScheduleError:
        planned = None
    count = None if planned is None else sum(step > first_step for step in planned)
    limit = args.save_total_limit + 1 if args.save_total_limit and args.save_total_limit > 0 else None
    if count is None or (limit is not None and limit < count):
        count = limit
    return max(count or 1, 1)


class RunRecord:
    """Counts interactions over all processes; writes `settings()` at the start of a run and with every checkpoint;
    restores on resume; saves checkpoints in the order above."""

    def __init__(self, output_dir: str, settings: Callable[[], dict], token_log: TokenLog, accelerator):
        self.output_dir = output_dir
        self.settings = settings
        self.token_log = token_log
        self.accelerator = accelerator
        # Answers generated in training and those the user replied to, over all processes. Saved with every
        # checkpoint's run settings and restored on resume.
        self.interactions = {"answers": 0, "with_feedback": 0}
        self.saving = False  # inside transformers' save, whose rotation must wait for the completeness mark
        self.checkpoint_size = 0  # bytes, estimated at the start

    def count(self, has_feedback: torch.Tensor) -> None:
        """Add one generation batch's answers (`has_feedback` (B,) on this process) from every process."""
        gathered = self.accelerator.gather(has_feedback.long())
        self.interactions["answers"] += gathered.numel()
        self.interactions["with_feedback"] += int(gathered.sum().item())

    def start(self, resume_from_checkpoint, model, args, dataset) -> Optional[str]:
        """Before training: find the checkpoint (True: the newest complete one), take the interactions back from it,
        drop the token-log records of the steps a resumed run will make again, write the run settings and warn when
        the disk cannot hold the checkpoints to come. Returns the checkpoint to resume from."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint in {self.output_dir} to resume from")
        first_step = 0
        if resume_from_checkpoint:
            state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, "trainer_state.json"))
            first_step = state.global_step
            logger.info("Resuming from %s (step %d)", resume_from_checkpoint, first_step)
            self.interactions = dict(read_run_settings(resume_from_checkpoint).get("interactions", self.interactions))
        weights, optimizer = checkpoint_bytes(model)
        self.checkpoint_size = weights + optimizer
        if self.accelerator.is_main_process:
            self.token_log.trim(first_step)
            write_run_settings(self.output_dir, self.settings())
            count = checkpoints_at_once(args, len(dataset) if hasattr(dataset, "__len__") else None, first_step)
            warn_if_short_of_space(self.output_dir, count * self.checkpoint_size + weights,
                                   f"{count} checkpoint(s) of about {format_bytes(self.checkpoint_size)} (weights "
                                   f"{format_bytes(weights)}, optimizer state {format_bytes(optimizer)}) and the "
                                   "final weights")
        self.accelerator.wait_for_everyone()
        return resume_from_checkpoint

    def save_checkpoint(self, save: Callable[[], None], run_dir: str, step: int, rotate: Callable[..., None]) -> None:
        """transformers' `save` of `run_dir`/checkpoint-`step`, then the token log's open window, then (every rank
        done) the completeness mark and the top-level run settings, then `rotate(output_dir=run_dir)`. A disk that
        fills is named (`DiskFullError`)."""
        folder = Path(run_dir) / f"checkpoint-{step}"
        main = self.accelerator.is_main_process
        with disk_full_named(folder, self.checkpoint_size):
            if main:
                unmark_checkpoint(folder)  # saved by an earlier run past this step: not complete until rewritten
            self.saving = True
            try:
                save()
            finally:
                self.saving = False
            # The records of the steps before this checkpoint, so that a resume from it neither repeats nor
            # loses any (its trim drops those of later steps).
            self.token_log.flush(write=main)
            self.accelerator.wait_for_everyone()  # every rank's RNG state is on disk
            if main:
                write_run_settings(folder, self.settings())
                write_run_settings(self.output_dir, self.settings())
        if main:
            rotate(output_dir=run_dir)

    @contextmanager
    def user_failure_shared(self) -> Iterator[None]:
        """Around the answers and the user's replies of one generation batch: with several processes, a
        `UserSimulatorError` on any of them becomes the error of all, so that every process stops at the same point
        (and saves the abort's checkpoint together) instead of waiting in a collective for one that has left."""
        failure = None
        try:
            yield
        except UserSimulatorError as err:
            failure = err
        if self.accelerator.num_processes > 1:
            failed = torch.tensor(float(failure is not None), device=self.accelerator.device)
            if self.accelerator.reduce(failed, reduction="sum").item() > 0 and failure is None:
                failure = UserSimulatorError("the user simulator of another process failed")
        if failure is not None:
            raise failure

    def save_before_abort(self, step: int, save: Callable[[], None]) -> None:
        """The user simulator failed in the middle of step `step` + 1: save the steps made so far as checkpoint-`step`
        (the caller has put back the RNG states of step `step`'s end, which a save then would have stored), so that
        a resume makes step `step` + 1 again exactly."""
        folder = Path(self.output_dir) / f"checkpoint-{step}"
        if step == 0 or latest_complete_checkpoint(self.output_dir) == str(folder):
            logger.error("The user simulator failed at step %d; nothing to save since the last checkpoint", step + 1)
            return
        save()
        logger.error("The user simulator failed at step %d: saved %s first; continue with --resume_from_checkpoint "
                     "last once it answers again", step + 1, folder)
