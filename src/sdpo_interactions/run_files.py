"""The files a run reads and writes: atomic writes, JSONL with `file:line` errors, appends, run settings, and the
error type (`InputError`) a wrong input raises, which the command lines print as one line.

Torch-free on purpose: data preparation, the caches, evaluation and visualization use it without loading a model
stack. Every writer leaves either the old file or the whole new one, never half a file, so a crash or a kill at any
moment loses at most the record being written.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

logger = logging.getLogger(__name__)

RUN_SETTINGS_NAME = "sdpo_run_settings.json"


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes via a temporary file in the same folder, fsync, then rename over `path`."""
    write_all_atomic({path: data})


def write_all_atomic(files: dict[str | os.PathLike, str | bytes]) -> None:
    """Write several files so that none is replaced before all are complete on disk (e.g. train and validation).

    On any error the temporary files are removed and existing files are left untouched.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def jsonl_text(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


class InputError(ValueError):
    """A user's input is wrong (a flag, a path, a line of a file): the command lines print it as one `error: ...`
    line and exit with `exit_code`, where any other exception keeps its traceback, since that one is a bug."""

    exit_code = 2


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that does not exist."""


# How many bad lines an error shows; the rest are counted.
BAD_LINES_SHOWN = 20


class BadLinesError(InputError):
    """Every bad line of a user's file at once, so that one run is enough to find them all. A file that names
    problems in its data ends the command with status 1, like a failed check; 2 stays for a wrong command line."""

    exit_code = 1

    def __init__(self, path: str | os.PathLike, problems: Sequence[str], hint: str = ""):
        self.problems = list(problems)
        super().__init__(bad_lines_text(path, self.problems, hint))


def bad_lines_text(path: str | os.PathLike, problems: Sequence[str], hint: str = "") -> str:
    """One line for one problem; else a count, then the first `BAD_LINES_SHOWN` problems, indented. `hint` (what to
    do about them) follows the first line in parentheses."""
    hint = f" ({hint})" if hint else ""
    if len(problems) == 1:
        return problems[0] + hint
    lines = [f"{path}: {len(problems)} bad lines{hint}"] + [f"  {problem}" for problem in problems[:BAD_LINES_SHOWN]]
    if len(problems) > BAD_LINES_SHOWN:
        lines.append(f"  ... and {len(problems) - BAD_LINES_SHOWN} more")
    return "\n".join(lines)


def _read_lines(path: str | os.PathLike) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read().splitlines(keepends=True)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a file") from None


def parse_jsonl_line(line: bytes) -> tuple[Any, Optional[str]]:
    """(record, None) for a line holding one JSON value, else (None, what is wrong with it)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        column = len(line[: err.start].decode("utf-8", errors="replace")) + 1
        return None, f"not valid UTF-8 (byte 0x{line[err.start]:02x} at column {column}); save the file as UTF-8"
    if not text.strip():
        return None, "empty line (every line must be one JSON record)"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"malformed JSON ({err.msg}, column {err.colno})"


def jsonl_records(
    path: str | os.PathLike, *, skip_blank: bool = True, tolerate_torn_tail: bool = False
) -> Iterator[tuple[str, Any, Optional[str]]]:
    """(`file:line`, record, None) for every good line and (`file:line`, None, what is wrong) for every bad one.

    With `tolerate_torn_tail`, an unparsable last line without a newline (a crash mid-append) is skipped with a
    warning instead, since the writer that appends next cuts it off anyway. A UTF-8 byte order mark is allowed.
    """
    lines = _read_lines(path)
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if skip_blank and not line.strip():
            continue
        record, problem = parse_jsonl_line(line.removeprefix(codecs.BOM_UTF8) if number == 1 else line)
        if problem is not None and tolerate_torn_tail and number == len(lines) and not line.endswith((b"\n", b"\r")):
            logger.warning("%s: ignoring an incomplete last line (an interrupted write)", where)
            continue
        yield where, record, problem


def iter_jsonl(
    path: str | os.PathLike, *, skip_blank: bool = True, tolerate_torn_tail: bool = False
) -> Iterator[tuple[str, Any]]:
    """Yield (`file:line`, record) for every line; the first bad line raises an `InputError` with its file and line
    (`jsonl_records` has the options)."""
    for where, record, problem in jsonl_records(path, skip_blank=skip_blank, tolerate_torn_tail=tolerate_torn_tail):
        if problem is not None:
            raise InputError(f"{where}: {problem}")
        yield where, record


def sort_records(
    items: Iterable[tuple[str, Any, Optional[str]]], check: Callable[[Any], Optional[str]]
) -> tuple[list[tuple[str, Any]], list[str]]:
    """The (where, record) of every good item, and `where: what is wrong` for every bad one: unreadable, or
    refused by `check` (a record -> its problem or None)."""
    good, bad = [], []
    for where, record, problem in items:
        problem = problem if problem is not None else check(record)
        if problem is None:
            good.append((where, record))
        else:
            bad.append(f"{where}: {problem}")
    return good, bad


def read_checked_jsonl(
    path: str | os.PathLike, check: Callable[[Any], Optional[str]], hint: str = ""
) -> list[tuple[str, Any]]:
    """(`file:line`, record) of every line of a user's JSONL file; a `BadLinesError` lists every bad line (with
    `hint`), and an empty file is an `InputError` rather than an empty dataset that fails later without a name."""
    good, bad = sort_records(jsonl_records(path), check)
    if bad:
        raise BadLinesError(path, bad, hint)
    if not good:
        raise InputError(f"{path}: the file is empty; expected one JSON record a line")
    return good


def check_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> None:
    """Fail now, not after the model has loaded, if the run cannot write in `path`: it, or a folder above it, is a
    file, or the file system refuses a write. A real probe file is written, since permission bits do not stop root
    and a read-only mount shows only when written to."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".sdpo-write-probe-") as probe:
            probe.write(b"probe")
            probe.flush()
    except OSError as err:
        raise InputError(f"{flag} {path}: cannot write in {existing} ({err.strerror})") from None


def append_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Append records, one whole line per write, flushed to disk before returning.

    A torn last line left by a crash mid-append is cut off first, so the file stays valid JSONL.
    """
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        if f.seek(0, os.SEEK_END):
            f.seek(0)
            content = f.read()
            if not content.endswith(b"\n"):
                logger.warning("%s: dropping an incomplete last line (an interrupted write)", path)
                f.truncate(content.rfind(b"\n") + 1)
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
        os.fsync(f.fileno())


def filter_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSONL file atomically with only the records `keep` accepts (a torn last line is dropped)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [record for _, record in iter_jsonl(path, tolerate_torn_tail=True) if keep(record)]
    write_atomic(path, jsonl_text(kept))


def write_run_settings(folder: str | os.PathLike, settings: dict) -> None:
    write_atomic(Path(folder) / RUN_SETTINGS_NAME, json.dumps(settings, indent=2, ensure_ascii=False))


def read_run_settings(folder: str | os.PathLike) -> dict:
    """A run's or checkpoint's settings; a malformed file names its line."""
    path = Path(folder) / RUN_SETTINGS_NAME
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return settings


def checkpoint_step(path: Path) -> Optional[int]:
    """N for a folder named checkpoint-N, else None."""
    prefix, _, number = path.name.partition("-")
    return int(number) if prefix == "checkpoint" and number.isdigit() and path.is_dir() else None


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-N` saved to the end, oldest first.

    The run settings are the last file a checkpoint gets, so a folder without them (a save cut short by a crash
    or a kill) is skipped with a warning rather than handed to a resume or an evaluation that would choke on it.
    """
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = checkpoint_step(path)
        if step is None:
            continue
        if (path / RUN_SETTINGS_NAME).is_file() and (path / "trainer_state.json").is_file():
            found.append((step, path))
        else:
            logger.warning("Skipping incomplete checkpoint %s", path)
    return sorted(found)


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Optional[str]:
    complete = complete_checkpoints(output_dir)
    return str(complete[-1][1]) if complete else None


def resolve_checkpoint(value: Optional[str], output_dir: str) -> Optional[str]:
    """`last` means the newest complete checkpoint in output_dir; anything else must be an existing folder."""
    if value is None:
        return None
    if value == "last":
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume_from_checkpoint last: no complete checkpoint-* folder in {output_dir}")
        return checkpoint
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint: no such folder: {value}")
    return value
