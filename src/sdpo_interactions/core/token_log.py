"""The token log: per logging step, a few samples with every token's student and teacher log-probability and the
per-token value the objective optimised, so that a run's signal can be read and drawn (visualize_signal.py).

Callbacks never see micro-batch tensors, so the trainer hands records in; `TokenLog` owns the buffer, the file, and
the trimming a resumed run needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from sdpo_interactions.core.batch import SDPOBatch
from sdpo_interactions.run_files import append_jsonl, filter_jsonl

TOKEN_LOG_NAME = "token_logps.jsonl"


def token_records(batch: SDPOBatch, student_logps: torch.Tensor, signal: torch.Tensor, decode: Callable, *,
                  mode: Optional[str] = None, label: Optional[str] = None, values: Optional[torch.Tensor] = None
                  ) -> list[dict]:
    """One JSON-ready record per answer: texts, contexts, token ids and strings, and per-token numbers.

    `student_logps` and `signal` (teacher - student log-prob of each sampled token) are (B, T); `values` (B, T) is
    what the objective `mode` optimised per token (the signal as clipped for `sampled_token`, the divergence for the
    logit modes), described by `label`; without them the record holds the signal only (score_signal's records).
    `decode` turns a list of single-token lists into their strings.
    """
    records = []
    for i in range(len(batch.completion_text)):
        keep = batch.completion_mask[i].bool()
        ids = batch.completion_ids[i][keep].tolist()
        stranger = batch.stranger_feedback[i]
        records.append(
            {
                "step": int(batch.generation_step[i]),
                "prompt": batch.request_text[i],
                "completion": batch.completion_text[i],
                "feedback": batch.feedback_text[i],
                "style": batch.feedback_style[i],
                "student_context": batch.student_context[i],
                "teacher_context": batch.teacher_context[i],
                "completion_ids": ids,
                "tokens": decode([[t] for t in ids]),
                "logp_student": student_logps[i][keep].float().tolist(),
                "logp_teacher": batch.teacher_logps[i][keep].float().tolist(),
                "signal": signal[i][keep].float().tolist(),
                **({} if values is None else {"distillation_mode": mode, "value_label": label,
                                              "value": values[i][keep].float().tolist()}),
                "stranger_feedback": stranger,
                "signal_unrelated": None if stranger is None else (
                    batch.unrelated_teacher_logps[i][keep].float() - student_logps[i][keep].float()
                ).tolist(),
            }
        )
    return records


class TokenLog:
    """The token log file: records buffered during a logging window, appended as whole lines when it closes."""

    def __init__(self, path: Path, samples_per_window: int):
        self.path = Path(path)
        self.samples_per_window = samples_per_window
        self.buffer: list[dict] = []

    @property
    def missing(self) -> int:
        return self.samples_per_window - len(self.buffer)

    def collect(self, local_records: Callable[[int], list[dict]], gather: Callable[[list], list]) -> None:
        """Gather this micro-batch's records from every process until the window has enough.

        `local_records(n)` makes at most n records on this process (only when some are missing, since decoding is
        not free). Every process sees the same gathered buffer, so all take the same branch and the collective
        stays in step.
        """
        missing = self.missing
        if missing <= 0:
            return
        self.buffer.extend(gather(local_records(missing))[:missing])

    def flush(self, write: bool) -> None:
        """Close the window: the main process writes (`write`), every process empties its buffer."""
        if write:
            append_jsonl(self.path, self.buffer)
        self.buffer = []

    def trim(self, first_step: int) -> None:
        """Drop records of steps at or after `first_step`: a resumed run regenerates them, so they'd repeat."""
        filter_jsonl(self.path, lambda record: record["step"] < first_step)
