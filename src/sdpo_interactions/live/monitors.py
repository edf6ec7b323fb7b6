"""The safeguards an update must pass before it is published. Users of SDPO-style training report late collapse
(entropy falling away), vanishing signal (the model no longer reads the feedback) and length drift; each monitor
measures one of them on the update's own samples and compares it with the base model, so drift that builds up over
many small updates is caught too. A reading outside its bounds trips the monitor: the update is not published and
the last good version keeps serving. Every reading is logged, tripped or not.

- `entropy_ratio`: mean token entropy of the updated adapter over the base model's, on the update's answers.
- `length_ratio`: mean length of answers the updated adapter writes to the update's prompts over the base model's,
  sampled with the same seed.
- `repetition_increase`: the repeated 4-gram share of those answers minus the base model's.
- `feedback_specificity`: mean |signal| under each sample's own follow-up minus under another sample's (as the
  trainers' `sdpo/feedback_specificity`); it needs two samples with different follow-ups.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Optional

logger = logging.getLogger(__name__)

MONITORS = ("entropy_ratio", "length_ratio", "repetition_increase", "feedback_specificity")


@dataclass(frozen=True)
class Reading:
    """One monitor's value for one update (None: not measured this time) and its bounds (None: unbounded)."""

    name: str
    value: Optional[float]
    low: Optional[float]
    high: Optional[float]

    @property
    def tripped(self) -> bool:
        if self.value is None:
            return False
        return (self.low is not None and self.value < self.low) or (self.high is not None and self.value > self.high)

    def as_dict(self) -> dict:
        return {**asdict(self), "tripped": self.tripped}


def bounds(args) -> dict[str, tuple[Optional[float], Optional[float]]]:
    """Each monitor's (low, high) from the server's options."""
    return {
        "entropy_ratio": (args.monitor_min_entropy_ratio, args.monitor_max_entropy_ratio),
        "length_ratio": (args.monitor_min_length_ratio, args.monitor_max_length_ratio),
        "repetition_increase": (None, args.monitor_max_repetition_increase),
        "feedback_specificity": (args.monitor_min_specificity, None),
    }


def readings(values: dict[str, Optional[float]], limits: dict[str, tuple[Optional[float], Optional[float]]]
             ) -> list[Reading]:
    return [Reading(name, values.get(name), *limits[name]) for name in MONITORS]


def ratio(numerator: float, denominator: float) -> Optional[float]:
    """numerator / denominator, or None when the denominator is not positive (nothing to compare with)."""
    return numerator / denominator if denominator > 0 else None


def repeated_ngram_share(tokens: list[int], n: int = 4) -> float:
    """The share of an answer's n-grams that repeat an earlier one: 0 for no repetition, near 1 for a loop."""
    grams = [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def log_readings(update_id: int, adapter: str, found: list[Reading]) -> None:
    for reading in found:
        value = "n/a" if reading.value is None else f"{reading.value:.4f}"
        logger.log(logging.WARNING if reading.tripped else logging.INFO,
                   "update %d (%s): monitor %s = %s, bounds [%s, %s]%s", update_id, adapter, reading.name, value,
                   reading.low, reading.high, " TRIPPED" if reading.tripped else "")
