"""Build the files training reads: ``train.jsonl`` and ``validation.jsonl``.

    python prepare_data.py tldr          [--output_dir DIR] [--source PATH]   # openai/summarize_from_feedback
    python prepare_data.py helpsteer     [--output_dir DIR] [--source PATH]   # nvidia/HelpSteer2
    python prepare_data.py wildchat      [--output_dir DIR] [--source PATH]   # allenai/WildChat, for offline SDPO
    python prepare_data.py wildfeedback  [--output_dir DIR] [--source PATH]   # microsoft/WildFeedback, offline
    python prepare_data.py conversations --source FILE [--output_dir DIR] [--skip_bad_lines]   # your own logs

The online tasks write one ``{"prompt": ...}`` a line; the offline ones one conversation a line,
``{"messages": [...]}`` (conversations.py), split into train and validation by conversation. A public dataset's
unusable rows are dropped and counted; a file of your own is checked line by line instead, and every bad line is
reported with its ``file:line`` (the command fails, status 1, unless ``--skip_bad_lines`` leaves them out).
``--out_dir`` is the old name of ``--output_dir``, still accepted.

Online SDPO needs prompts only: the policy writes the answers and the simulated user reacts to them. The row
transforms and filters below are pure functions over plain dicts, so they are tested on hand-written rows; loading
(the Hub, or a local copy with ``--source`` for clusters without Hub access) and writing are kept apart from them.
The output is deterministic (the same input gives byte-identical files) and every split is written atomically, so an
interrupted run never leaves a half-written file that training would read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from sdpo_interactions.cli.common import input_errors_as_one_line
from sdpo_interactions.conversations import (
    conversation_problem,
    held_out_rank,
    is_held_out,
    normalize_turns,
    raw_turns,
    record_problem,
)
from sdpo_interactions.run_files import (
    BadLinesError,
    InputError,
    MissingInputError,
    bad_lines_text,
    check_output_dir,
    jsonl_records,
    sort_records,
    write_all_atomic,
)

TLDR_SUFFIX = "\nTL;DR:"
# A TL;DR prompt is kept only if it is shorter than this many characters (suffix included).
TLDR_MAX_PROMPT_CHARS = 1024
# A HelpSteer2 prompt or response longer than this many characters drops the row.
HELPSTEER_MAX_CHARS = 2048
# HelpSteer2 joins the turns of a multi-turn conversation with these markers.
MULTI_TURN_MARKER = re.compile(r"<extra_id_\d+>")

SPLITS = ("train", "validation")
HUB_SOURCES = {
    "tldr": ("openai/summarize_from_feedback", "comparisons"),
    "helpsteer": ("nvidia/HelpSteer2", None),
}
# The only columns the transforms read; selecting them first keeps iteration over the nested TL;DR rows cheap.
SOURCE_COLUMNS = {"tldr": ["info"], "helpsteer": ["prompt", "response"]}
DEFAULT_OUT_DIRS = {"tldr": "data/tldr_prompts_unique", "helpsteer": "data/helpsteer2_prompts"}


# ----------------------------------------------------------------------------------------------- pure transforms
def normalize_key(text: str) -> str:
    """Key for duplicate detection: whitespace runs collapsed to one space, lower-cased."""
    return " ".join(text.split()).lower()


def tldr_prompt(row: Mapping) -> str:
    """The Reddit post (or, for the CNN/DM rows that have no post, the article), stripped, then ``TL;DR:`` on its own
    line. Returns "" when the row has no text, so the empty filter can count it."""
    info = row.get("info") or {}
    text = (info.get("post") or info.get("article") or "").strip()
    return text + TLDR_SUFFIX if text else ""


def is_multi_turn(prompt: str) -> bool:
    """HelpSteer2 stores earlier turns inline, separated by ``<extra_id_N>`` markers."""
    return MULTI_TURN_MARKER.search(prompt) is not None


def dedup(prompts: Iterable[str], seen: set[str] | None = None) -> tuple[list[str], int]:
    """Keep the first prompt of each normalised key, in order; also drop keys already in ``seen``.

    Returns the kept prompts and how many were dropped. ``seen`` is not modified."""
    taken = set(seen or ())
    kept, dropped = [], 0
    for prompt in prompts:
        key = normalize_key(prompt)
        if key in taken:
            dropped += 1
            continue
        taken.add(key)
        kept.append(prompt)
    return kept, dropped


def filter_tldr_split(rows: Iterable[Mapping], train_keys: set[str] | None = None) -> tuple[list[str], dict[str, int]]:
    """Prompts of one TL;DR split and the count each filter dropped. Pass the train keys for the validation split,
    so a post that is also in train (the comparisons data repeats posts) never leaks into validation."""
    counts = {"rows": 0, "empty": 0, "too_long": 0, "duplicate": 0}
    candidates = []
    for row in rows:
        counts["rows"] += 1
        prompt = tldr_prompt(row)
        if not prompt:
            counts["empty"] += 1
        elif len(prompt) >= TLDR_MAX_PROMPT_CHARS:
            counts["too_long"] += 1
        else:
            candidates.append(prompt)
    kept, counts["duplicate"] = dedup(candidates)
    if train_keys is not None:
        kept, counts["in_train"] = dedup(kept, seen=train_keys)
    counts["kept"] = len(kept)
    return kept, counts


def filter_helpsteer_split(rows: Iterable[Mapping]) -> tuple[list[str], dict[str, int]]:
    """Single-turn HelpSteer2 prompts of one split and the count each filter dropped. Each prompt appears once per
    split in the source with several responses; a prompt is kept when any of its rows passes the filters."""
    counts = {"rows": 0, "multi_turn": 0, "empty": 0, "too_long": 0, "duplicate": 0}
    candidates = []
    for row in rows:
        counts["rows"] += 1
        prompt = (row.get("prompt") or "").strip()
        response = (row.get("response") or "").strip()
        if is_multi_turn(prompt):
            counts["multi_turn"] += 1
        elif not prompt or not response:
            counts["empty"] += 1
        elif len(prompt) > HELPSTEER_MAX_CHARS or len(response) > HELPSTEER_MAX_CHARS:
            counts["too_long"] += 1
        else:
            candidates.append(prompt)
    kept, counts["duplicate"] = dedup(candidates)
    counts["kept"] = len(kept)
    return kept, counts


def build_tldr(splits: Mapping[str, Iterable[Mapping]]) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    train, train_counts = filter_tldr_split(splits["train"])
    validation, val_counts = filter_tldr_split(splits["validation"], train_keys={normalize_key(p) for p in train})
    return {"train": train, "validation": validation}, {"train": train_counts, "validation": val_counts}


def build_helpsteer(splits: Mapping[str, Iterable[Mapping]]) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    prompts, counts = {}, {}
    for split in SPLITS:
        prompts[split], counts[split] = filter_helpsteer_split(splits[split])
    return prompts, counts


BUILDERS = {"tldr": build_tldr, "helpsteer": build_helpsteer}

# Offline SDPO: logged conversations. WildChat is filtered to English as in the authors' preparation.
CONVERSATION_SOURCES = {"wildchat": ("allenai/WildChat", None), "wildfeedback": ("microsoft/WildFeedback", "wildfeedback")}
CONVERSATION_DEFAULTS = {"wildchat": {"language": "English"}, "wildfeedback": {}, "conversations": {}}
DEFAULT_OUT_DIRS.update({"wildchat": "data/wildchat_conversations", "wildfeedback": "data/wildfeedback_conversations",
                         "conversations": "data/conversations"})
HELD_OUT_PERCENT = 2.0


def split_conversations(rows: Iterable[Mapping], *, language: str | None = None,
                        held_out_percent: float = HELD_OUT_PERCENT) -> tuple[dict[str, list], dict[str, int]]:
    """Conversations that pass every filter, as role/content messages, split into train and validation by
    conversation (so none is in both), and the count each filter dropped. Duplicates are kept once. When the share
    holds none out of two or more conversations, one is held out anyway (counted as held_out_to_fill_validation)."""
    counts = {"rows": 0, "unreadable": 0, "language": 0, "toxic": 0, "redacted": 0, "empty_turn": 0, "truncated": 0,
              "roles_out_of_order": 0, "no_reply": 0, "turn_too_long": 0, "too_long": 0, "duplicate": 0}
    splits: dict[str, list] = {split: [] for split in SPLITS}
    train_keys, seen = [], set()
    for row in rows:
        counts["rows"] += 1
        turns = normalize_turns(raw_turns(row))
        problem = conversation_problem(row, turns, language)
        if problem is not None:
            counts[problem] += 1
            continue
        key = json.dumps(turns, ensure_ascii=False)
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        split_key = str(row.get("conversation_id") or key)
        held_out = is_held_out(split_key, held_out_percent)
        splits["validation" if held_out else "train"].append(turns)
        if not held_out:
            train_keys.append(split_key)
    if held_out_percent > 0 and not splits["validation"] and len(splits["train"]) >= 2:
        # Too few conversations for the share to hold any out: hold out the one nearest to it, so that validation
        # is never silently empty, and the choice stays stable.
        nearest = min(range(len(train_keys)), key=lambda i: held_out_rank(train_keys[i]))
        splits["validation"].append(splits["train"].pop(nearest))
        counts["held_out_to_fill_validation"] = 1
    for split in SPLITS:
        counts[f"kept_{split}"] = len(splits[split])
    return splits, counts


# ----------------------------------------------------------------------------------------------- loading and writing
def load_source(task: str, source: str | None):
    """The ``train`` and ``validation`` splits, from the Hub or from a local copy.

    A local copy is either a ``DatasetDict.save_to_disk`` folder or a folder of parquet/JSON(L) files whose names
    start with the split (``train.jsonl``, ``validation-00000-of-00001.parquet``, ...); ``datasets`` infers the
    splits from the names. For a snapshot of the TL;DR Hub repository, point at its ``comparisons`` sub-folder."""
    import datasets

    if source is None:
        name, config = HUB_SOURCES[task]
        data = datasets.load_dataset(name, config)
    else:
        path = Path(source)
        if not path.is_dir():
            raise MissingInputError(f"--source {source}: not a folder (expected a save_to_disk folder or a folder "
                                    "of parquet/JSON files named by split)")
        if (path / "dataset_dict.json").is_file():
            data = datasets.load_from_disk(str(path))
        else:
            data = datasets.load_dataset(str(path))
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise InputError(f"{source or HUB_SOURCES[task][0]}: missing split(s) {', '.join(missing)}; "
                         f"found {', '.join(sorted(data)) or 'none'}; need {', '.join(SPLITS)}")
    columns = SOURCE_COLUMNS[task]
    for split in SPLITS:
        absent = [c for c in columns if c not in data[split].column_names]
        if absent:
            raise InputError(f"{source or HUB_SOURCES[task][0]}: split {split} lacks column(s) "
                             f"{', '.join(absent)}; has {', '.join(data[split].column_names)}")
    return {split: data[split].select_columns(columns) for split in SPLITS}


def jsonl_lines(records: Iterable) -> Iterator[str]:
    """Prompts (strings) as ``{"prompt": ...}`` lines, conversations (message lists) as ``{"messages": ...}``."""
    for record in records:
        field = "prompt" if isinstance(record, str) else "messages"
        yield json.dumps({field: record}, ensure_ascii=False) + "\n"


def load_conversation_rows(task: str, source: str | None):
    """The logged conversations of a task: the Hub's train split, or a local file or folder (JSONL, parquet, or a
    save_to_disk folder). Only `train` exists in WildChat and WildFeedback: the held-out split is made here."""
    import datasets

    if source is None:
        if task not in CONVERSATION_SOURCES:
            raise InputError(f"{task} needs --source: a JSONL file of {{\"messages\": [...]}} conversations")
        name, config = CONVERSATION_SOURCES[task]
        return datasets.load_dataset(name, config, split="train")
    path = Path(source)
    if path.is_file():
        kind = "parquet" if path.suffix == ".parquet" else "json"
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        data = datasets.load_from_disk(str(path))
        return data["train"] if isinstance(data, datasets.DatasetDict) else data
    if path.is_dir():
        return datasets.load_dataset(str(path), split="train")
    raise MissingInputError(f"--source {source}: no such file or folder")


def write_splits_atomically(out_dir: Path, prompts: Mapping[str, Iterable[str]]) -> dict[str, Path]:
    """Write ``<split>.jsonl`` for every split; no file is replaced before all of them are complete."""
    targets = {split: out_dir / f"{split}.jsonl" for split in prompts}
    write_all_atomic({targets[split]: "".join(jsonl_lines(p)) for split, p in prompts.items()})
    return targets


def format_report(task: str, counts: Mapping[str, Mapping[str, int]], records: Mapping[str, list],
                  show: int) -> str:
    lines = [f"[{task}]"]
    for split, split_counts in counts.items():
        lines.append(f"  {split}: " + ", ".join(f"{name}={n}" for name, n in split_counts.items()))
    for i, record in enumerate(records["train"][:show]):
        text = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
        shown = text if len(text) <= 300 else text[:300] + " ..."
        lines.append(f"  train[{i}]: {json.dumps(shown, ensure_ascii=False) if isinstance(record, str) else shown}")
    return "\n".join(lines)


SKIP_FLAG_HINT = "--skip_bad_lines leaves bad lines out"


def read_own_conversations(source: str, skip_bad_lines: bool = False) -> tuple[list, list[str]]:
    """The conversations of a user's own file, and `where: what is wrong` for every bad one, by the rule
    train_offline.py applies (conversations.record_problem). A JSONL file is read line by line, so a bad line is
    named by its `file:line`; rows of a parquet file or a folder are named by their number, from 1. Without
    `skip_bad_lines` a bad line is an error that lists them all."""
    path = Path(source)
    if path.is_file() and path.suffix != ".parquet":
        items = jsonl_records(path)
    else:
        rows = load_conversation_rows("conversations", source)
        items = ((f"{source}: row {i}", row, None) for i, row in enumerate(rows, start=1))
    good, bad = sort_records(items, record_problem)
    if bad and not skip_bad_lines:
        raise BadLinesError(source, bad, SKIP_FLAG_HINT)
    if not good and not bad:
        raise InputError(f"{source}: the file is empty; expected one {{\"messages\": [...]}} conversation a line")
    return [row for _, row in good], bad


def prepare_conversations(args: argparse.Namespace) -> tuple[dict[str, list], dict[str, dict[str, int]]]:
    """The splits of a conversation task and its counts: a public dataset's rows are filtered and counted, a
    user's own file is checked line by line first (`read_own_conversations`)."""
    bad = []
    if args.task == "conversations":
        rows, bad = read_own_conversations(args.source, args.skip_bad_lines)
        if bad:
            print("warning: " + bad_lines_text(args.source, bad, "left out: --skip_bad_lines"), file=sys.stderr)
    else:
        rows = load_conversation_rows(args.task, args.source)
    records, counts = split_conversations(rows, language=args.language or None,
                                          held_out_percent=args.held_out_percent)
    return records, {"all": {"bad_lines": len(bad), **counts} if bad else counts}


TASK_HELP = {
    "tldr": "TL;DR prompts from openai/summarize_from_feedback (comparisons)",
    "helpsteer": "single-turn prompts from nvidia/HelpSteer2",
    "wildchat": "English conversations from allenai/WildChat, for offline SDPO",
    "wildfeedback": "conversations from microsoft/WildFeedback, for offline SDPO",
    "conversations": "your own logged conversations (JSONL of {\"messages\": [...]}), for offline SDPO",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True, metavar="{" + ",".join(TASK_HELP) + "}")
    for task, help_text in TASK_HELP.items():
        sub = tasks.add_parser(task, help=help_text)
        sub.add_argument("--output_dir", default=None,
                         help=f"output folder for train.jsonl and validation.jsonl (default: {DEFAULT_OUT_DIRS[task]})")
        sub.add_argument("--out_dir", default=None, help="deprecated name of --output_dir")
        sub.add_argument("--source", default=None, required=task == "conversations",
                         help="read a local copy instead of the Hub: a save_to_disk folder, or a folder of "
                              "parquet/JSON files named by split (train*, validation*); for the conversation tasks "
                              "also a single JSONL or parquet file")
        sub.add_argument("--show", type=int, default=3, help="how many train records to print (default: 3)")
        if task in CONVERSATION_DEFAULTS:
            language = CONVERSATION_DEFAULTS[task].get("language")
            sub.add_argument("--language", default=language,
                             help=f"keep only conversations marked with this language (default: {language}); "
                                  "pass an empty string to keep all")
            sub.add_argument("--held_out_percent", type=float, default=HELD_OUT_PERCENT,
                             help=f"share of conversations in validation.jsonl (default: {HELD_OUT_PERCENT}; at "
                                  "least one is held out of two or more, unless it is 0)")
        if task == "conversations":
            sub.add_argument("--skip_bad_lines", action="store_true",
                             help="leave out the lines that are not a valid conversation, and list them, instead "
                                  "of failing on them")
    return parser.parse_args(argv)


def output_dir_of(args: argparse.Namespace) -> str:
    """--output_dir, or the deprecated --out_dir (with a warning), or the task's default folder."""
    if args.out_dir is not None:
        if args.output_dir is not None and args.output_dir != args.out_dir:
            raise InputError("--out_dir is the old name of --output_dir; pass --output_dir only")
        print("warning: --out_dir is deprecated; use --output_dir", file=sys.stderr)
        return args.out_dir
    return args.output_dir or DEFAULT_OUT_DIRS[args.task]


def warn_about_empty_splits(args: argparse.Namespace, records: Mapping[str, list], targets: Mapping[str, Path]) -> None:
    """An empty split file is valid JSONL, so say so loudly: training or evaluation on it would fail far later."""
    held_out_percent = getattr(args, "held_out_percent", None)
    for split, path in targets.items():
        if records[split]:
            continue
        if held_out_percent == 0 and split == "validation":
            print(f"note: {path} is empty (--held_out_percent 0)", file=sys.stderr)
        elif held_out_percent is not None and split == "validation":
            print(f"warning: {path} is empty: {len(records['train'])} conversation(s) kept, too few to hold one out",
                  file=sys.stderr)
        else:
            print(f"warning: {path} is empty: no record of the {split} split passed the filters (counts above)",
                  file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = output_dir_of(args)
    check_output_dir(output_dir)
    if args.task in CONVERSATION_DEFAULTS:
        records, counts = prepare_conversations(args)
    else:
        records, counts = BUILDERS[args.task](load_source(args.task, args.source))
    targets = write_splits_atomically(Path(output_dir), records)
    print(format_report(args.task, counts, records, args.show))
    for split, path in targets.items():
        print(f"wrote {len(records[split])} records to {path}")
    if counts.get("all", {}).get("held_out_to_fill_validation"):
        print(f"note: {args.held_out_percent}% of the conversations rounds to none; one is held out so that "
              "validation.jsonl is not empty", file=sys.stderr)
    warn_about_empty_splits(args, records, targets)
    return 0


def cli() -> None:
    """The command line: a known input error is one `error: ...` line (status 2; 1 for a file's bad lines)."""
    with input_errors_as_one_line():
        sys.exit(main())


if __name__ == "__main__":
    cli()
