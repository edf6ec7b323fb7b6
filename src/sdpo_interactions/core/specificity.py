"""Feedback specificity: is the policy reading its user? At logging steps a few answers are scored again with
another sample's feedback; if a stranger's feedback moves the signal as much as the sample's own, the signal does
not depend on what the user said, and SDPO has little to learn from."""

from __future__ import annotations

import logging
from typing import Optional

from sdpo_interactions.core.maths import derangement

logger = logging.getLogger(__name__)


def choose_strangers(feedback: list[str], has_feedback: list[bool], limit: int) -> list[Optional[str]]:
    """For each sample, the stranger's feedback it is scored again with, or None: up to `limit` samples, each
    paired by a derangement with another sample, both with feedback."""
    strangers: list[Optional[str]] = [None] * len(feedback)
    if limit == 0 or len(feedback) < 2:
        return strangers
    other = derangement(len(feedback))
    chosen = [i for i in range(len(feedback)) if has_feedback[i] and has_feedback[other[i]]]
    for i in chosen[:limit]:
        strangers[i] = feedback[other[i]]
    return strangers


class SpecificityWatch:
    """Warns once when the specificity stays under `minimum` for `patience` logging steps in a row (0: never)."""

    def __init__(self, minimum: float, patience: int):
        self.minimum = minimum
        self.patience = patience
        self.flat_steps = 0  # logging steps in a row under the minimum

    def observe(self, specificity: Optional[float]) -> None:
        if specificity is None or self.patience == 0:
            return
        self.flat_steps = self.flat_steps + 1 if specificity < self.minimum else 0
        if self.flat_steps == self.patience:
            logger.warning(
                "sdpo/feedback_specificity has stayed below %s for %d logging steps: the policy does not seem to read "
                "its user's feedback (a stranger's feedback moves its signal as much as its own). SDPO learns little "
                "then; check the policy's size, the persona and the hindsight template (visualize_signal.py cases).",
                self.minimum, self.flat_steps,
            )
