"""The paper's offline training data, and a conversations file's counts next to it.

Table 2 trains on WildFeedback: of its about 20k conversations, about 14k have a user reply to an answer (a
follow-up), which gives about 50k (answer, reply) samples. Table 3 trains on a random slice of English WildChat of the
same size: the authors shuffle it (seed 42) and keep conversations until about 14-15k of them give about 50k samples.
The offline launcher prints what its data file holds beside these figures before a run
(`python -m sdpo_interactions.paper_data TRAIN_JSONL`), so a run on a partial download or an unexpected filter is
visible before its first step. Torch-free.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdpo_interactions.conversations import interaction_samples, read_conversations
from sdpo_interactions.run_files import InputError


@dataclass(frozen=True)
class PaperData:
    table: str
    what: str
    figures: str  # the paper's counts, as the paper states them


PAPER_DATA = {
    "wildfeedback": PaperData("Table 2", "WildFeedback (microsoft/WildFeedback)",
                              "about 20k conversations, about 14k of them with a follow-up, about 50k samples"),
    "wildchat": PaperData("Table 3", "a random slice of English WildChat (allenai/WildChat)",
                          "about 14-15k conversations with a follow-up, about 50k samples"),
}


def file_counts(path: str) -> dict[str, int]:
    """Conversations, conversations with at least one (answer, reply) sample, and samples, before any token budget."""
    conversations = with_follow_up = samples = 0
    for _, messages in read_conversations(path):
        found = len(interaction_samples(messages))
        conversations += 1
        with_follow_up += found > 0
        samples += found
    return {"conversations": conversations, "with_follow_up": with_follow_up, "samples": samples}


def dataset_of(path: str) -> Optional[str]:
    """Which of the paper's datasets a prepared file is, from its folder's name (prepare_data.py's defaults)."""
    folder = Path(path).resolve().parent.name.lower()
    return next((name for name in PAPER_DATA if name in folder), None)


def comparison_lines(path: str, dataset: Optional[str], train_n: Optional[int] = None) -> list[str]:
    counts = file_counts(path)
    lines = [f"data: {path} holds {counts['conversations']:,} conversations ({counts['with_follow_up']:,} with a "
             f"follow-up) and {counts['samples']:,} (answer, reply) samples, before the run's token budgets"]
    if train_n is not None:
        lines.append(f"  the run trains on a seeded random {min(train_n, counts['samples']):,} of them (TRAIN_N)")
    if dataset is None:
        lines.append("  (not one of the paper's datasets: " + "; ".join(
            f"{paper.table}, {paper.what}: {paper.figures}" for paper in PAPER_DATA.values()) + ")")
    else:
        paper = PAPER_DATA[dataset]
        lines.append(f"  the paper's {paper.table}, {paper.what}: {paper.figures}")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdpo_interactions.paper_data",
                                     description="A conversations file's counts next to the paper's offline data.")
    parser.add_argument("train_jsonl")
    parser.add_argument("--dataset", choices=list(PAPER_DATA), help="default: from the file's folder name")
    parser.add_argument("--train_n", type=int, help="samples the run takes (a seeded random subset)")
    args = parser.parse_args(argv)
    try:
        lines = comparison_lines(args.train_jsonl, args.dataset or dataset_of(args.train_jsonl), args.train_n)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
