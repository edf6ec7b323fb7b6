"""The run's own record beside the Trainer's: the interactions seen (the x-axis of the paper's win-rate curves), the
run settings at the top of the output folder, and what a resume must restore or trim so that it continues exactly."""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from transformers import TrainerState

from sdpo_interactions.core.token_log import TokenLog
from sdpo_interactions.run_files import read_run_settings, write_run_settings


class RunRecord:
    """Counts interactions over all processes; writes `settings()` at the start of a run; restores on resume."""

    def __init__(self, output_dir: str, settings: Callable[[], dict], token_log: TokenLog, accelerator):
        self.output_dir = output_dir
        self.settings = settings
        self.token_log = token_log
        self.accelerator = accelerator
        # Answers generated in training and those the user replied to, over all processes. Saved with every
        # checkpoint's run settings and restored on resume.
        self.interactions = {"answers": 0, "with_feedback": 0}

    def count(self, has_feedback: torch.Tensor) -> None:
        """Add one generation batch's answers (`has_feedback` (B,) on this process) from every process."""
        gathered = self.accelerator.gather(has_feedback.long())
        self.interactions["answers"] += gathered.numel()
        self.interactions["with_feedback"] += int(gathered.sum().item())

    def start(self, resume_from_checkpoint: Optional[str]) -> None:
        """Before training: take the interactions back from the checkpoint, drop the token-log records of the steps
        a resumed run will make again, and write the run settings."""
        first_step = 0
        if resume_from_checkpoint:
            state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, "trainer_state.json"))
            first_step = state.global_step
            self.interactions = dict(read_run_settings(resume_from_checkpoint).get("interactions", self.interactions))
        if self.accelerator.is_main_process:
            self.token_log.trim(first_step)
            write_run_settings(self.output_dir, self.settings())
        self.accelerator.wait_for_everyone()
