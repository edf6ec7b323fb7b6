"""The files a run reads and writes: atomic writes, JSONL with `file:line` errors, appends, run settings, and the
error type (`InputError`) a wrong input raises, which the command lines print as one line.

Torch-free on purpose: data preparation, the caches, evaluation and visualization use it without loading a model
stack. Every writer leaves either the old file or the whole new one, never half a file, so a crash or a kill at any
moment loses at most the record being written.
"""

from __future__ import annotations

import codecs
import errno
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
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


class RunError(Exception):
    """The run cannot go on for a cause outside the code and its inputs (a full disk, a user simulator that stopped
    answering). The command lines print it as one `error: ...` line, which says what was saved, and exit with 1."""

    exit_code = 1


class DiskFullError(RunError, OSError):
    """A save failed for want of disk space; the message names the folder, the space needed and the space free."""


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


# What a resume reads besides the run settings. Weights: a full model (one file or shards), a LoRA adapter, or the
# FSDP and DeepSpeed layouts (checked leniently: that their folder or file is there, not each shard).
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
FSDP_WEIGHTS = "pytorch_model_fsdp*"
DEEPSPEED_STATES = "global_step*"  # DeepSpeed's own folder: its weights, optimizer and (its own) scheduler


def _any(folder: Path, *patterns: str) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in patterns)


def rng_state_names(world_size: Optional[int]) -> list[str]:
    """The RNG files transformers saves: one for a single process, one per rank (`rng_state_<rank>.pth`) else."""
    if world_size is None or world_size <= 1:
        return ["rng_state.pth"]
    return [f"rng_state_{rank}.pth" for rank in range(world_size)]


def _saved_with(folder: Path) -> dict:
    """The checkpoint's run settings, or {} when they are missing or unreadable (then it is incomplete anyway)."""
    try:
        return read_run_settings(folder)
    except (OSError, ValueError):
        return {}


def checkpoint_missing(folder: str | os.PathLike) -> list[str]:
    """What a resume reads that `folder` lacks, in words ([] for a complete checkpoint).

    Checked: the weights (or the adapter), the optimizer, the scheduler, every rank's RNG state (the number of ranks
    is in the run settings; without it one file of either form is enough), trainer_state.json and the run settings.
    DeepSpeed keeps the optimizer (and its own scheduler) in its `global_step*` folder, and FSDP in an
    `optimizer*` file or folder: there the folder or file is checked, not every shard. A checkpoint saved with
    `save_only_model` (the run settings say so) lacks the optimizer, scheduler and RNG by design: those are not
    listed here, and `resolve_checkpoint` refuses to resume from it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return ["the folder"]
    settings = _saved_with(folder)
    model_only = bool(settings.get("save_only_model"))
    missing = []
    if _any(folder, DEEPSPEED_STATES):
        if not _any(folder, f"{DEEPSPEED_STATES}/*optim_states.pt"):
            missing.append(f"DeepSpeed optimizer states ({DEEPSPEED_STATES}/*optim_states.pt)")
    else:
        if not _any(folder, *WEIGHT_NAMES, FSDP_WEIGHTS):
            missing.append(f"model weights (one of {', '.join(WEIGHT_NAMES)})")
        if not model_only and not _any(folder, "optimizer.pt", "optimizer.bin", "optimizer_*"):
            missing.append("optimizer.pt")
        if not model_only and not (folder / "scheduler.pt").is_file():
            missing.append("scheduler.pt")
    if not model_only:
        world_size = settings.get("world_size")
        rng = rng_state_names(world_size)
        if world_size is None and _any(folder, "rng_state.pth", "rng_state_*.pth"):  # settings of an older run
            rng = []
        missing += [name for name in rng if not (folder / name).is_file()]
    return missing + [name for name in ("trainer_state.json", RUN_SETTINGS_NAME) if not (folder / name).is_file()]


def checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-N` folder, complete or not, oldest first."""
    found = [(checkpoint_step(path), path) for path in Path(output_dir).glob("checkpoint-*")]
    return sorted((step, path) for step, path in found if step is not None)


def complete_checkpoints(output_dir: str | os.PathLike, *, for_resume: bool = False) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-N` saved to the end, oldest first.

    The run settings are the last file a checkpoint gets (and the first a rotation deletes), so a folder without
    them is a save cut short or a deletion under way; it is skipped with a warning. An evaluation needs no more
    than that (it checks the weights itself). `for_resume` asks for everything a resume reads (`checkpoint_missing`)
    and leaves out checkpoints saved with `save_only_model`.
    """
    found = []
    for step, path in checkpoint_folders(output_dir):
        if for_resume:
            missing = checkpoint_missing(path)
            usable = not missing and not _saved_with(path).get("save_only_model")
        else:
            missing = [name for name in (RUN_SETTINGS_NAME, "trainer_state.json") if not (path / name).is_file()]
            usable = not missing
        if usable:
            found.append((step, path))
        elif missing:
            logger.warning("Skipping incomplete checkpoint %s (no %s)", path, ", no ".join(missing))
    return found


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Optional[str]:
    """The newest checkpoint a resume can continue from exactly, or None."""
    complete = complete_checkpoints(output_dir, for_resume=True)
    return str(complete[-1][1]) if complete else None


MODEL_ONLY_HINT = ("it holds the weights but no optimizer, scheduler or RNG state, so a resume cannot continue the "
                   "run exactly; start a new run from its weights with --model_name_or_path {path}")


def resolve_checkpoint(value: Optional[str], output_dir: str) -> Optional[str]:
    """The checkpoint `--resume_from_checkpoint` names, checked before any model loads: `last` is the newest one a
    resume can continue from (logged); a named one must hold everything a resume reads, or it is refused with
    what it lacks. A checkpoint saved with `save_only_model` is refused either way."""
    if value is None:
        return None
    flag = f"--resume_from_checkpoint {value}"
    if value == "last":
        checkpoint = latest_complete_checkpoint(output_dir)
        if checkpoint is None:
            model_only = [path for _, path in complete_checkpoints(output_dir)
                          if _saved_with(path).get("save_only_model")]
            if model_only:
                raise InputError(f"{flag}: {model_only[-1]} was saved with --save_only_model: "
                                 + MODEL_ONLY_HINT.format(path=model_only[-1]))
            raise MissingInputError(f"{flag}: no complete checkpoint-* folder in {output_dir}")
        logger.info("%s: %s is the newest complete checkpoint", flag, checkpoint)
        return checkpoint
    if not os.path.isdir(value):
        raise MissingInputError(f"{flag}: no such folder")
    missing = checkpoint_missing(value)
    if missing:
        raise InputError(f"{flag}: an incomplete checkpoint (no {', no '.join(missing)}); resume from a complete "
                         "one, or `last` for the newest")
    if _saved_with(Path(value)).get("save_only_model"):
        raise InputError(f"{flag}: saved with --save_only_model: " + MODEL_ONLY_HINT.format(path=value))
    return value


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unmark_checkpoint(folder: str | os.PathLike) -> None:
    """Take the completeness mark (the run settings) off a checkpoint, durably, before its files change."""
    mark = Path(folder) / RUN_SETTINGS_NAME
    if mark.exists():
        mark.unlink()
        _fsync_folder(mark.parent)


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int, protect: Optional[str] = None) -> list[Path]:
    """Keep the newest `keep` complete checkpoints (and `protect`, the best model, as transformers does); delete the
    others, incomplete ones included. Returns the deleted folders.

    Each deletion takes the mark off first, so a kill halfway leaves a folder that is visibly incomplete, never one
    that looks complete without its optimizer. Called once the newest checkpoint is marked complete, so at every
    moment at least one complete checkpoint exists.
    """
    complete = [path for _, path in complete_checkpoints(output_dir)]
    kept = complete[-keep:]
    best = Path(protect) if protect else None
    if best in complete and best not in kept:
        kept = [best] + complete[-max(keep - 1, 1):]
    deleted = [path for _, path in checkpoint_folders(output_dir) if path not in kept]
    for path in deleted:
        logger.info("Deleting older checkpoint %s (save_total_limit %d)", path, keep)
        unmark_checkpoint(path)
        shutil.rmtree(path, ignore_errors=True)
    return deleted


# -- disk space ---------------------------------------------------------------------------------------------------


def free_bytes(path: str | os.PathLike) -> int:
    """Free space for an unprivileged writer on the file system of `path` (or of its nearest existing parent)."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as `df -H` prints them)."""
    unit = "bytes"
    for larger in ("kB", "MB", "GB", "TB"):
        if n < 1000:
            break
        n, unit = n / 1000, larger
    return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"


def _out_of_space(err: BaseException) -> bool:
    """Whether an exception, or one it came from, says the disk is full (torch's writer says only 'file write
    failed' or 'unexpected pos', so the free space decides too, in `disk_full_named`)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "StorageFull" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def disk_full_named(folder: str | os.PathLike, needed: int) -> Iterator[None]:
    """Turn a save that fails for want of space (about `needed` bytes) into a `DiskFullError` naming the folder, the
    space needed and the space free; any other failure passes unchanged."""
    try:
        yield
    except Exception as err:
        free = free_bytes(folder)
        if isinstance(err, DiskFullError) or not (_out_of_space(err) or free < needed):
            raise
        said = (str(err).splitlines() or [""])[0]
        raise DiskFullError(f"saving {folder} failed: the disk is full (a checkpoint needs about "
                            f"{format_bytes(needed)}, {format_bytes(free)} free there; {type(err).__name__}: {said}). "
                            "The checkpoints saved before are intact; free some space, or lower "
                            "--save_total_limit, and resume with --resume_from_checkpoint last") from err


def warn_if_short_of_space(folder: str | os.PathLike, needed: int, what: str) -> bool:
    """Log a warning, and return True, when the disk holding `folder` has less than `needed` bytes free."""
    free = free_bytes(folder)
    if free >= needed:
        return False
    logger.warning("%s: %s free, but %s need about %s; the run will stop when a save fails", folder,
                   format_bytes(free), what, format_bytes(needed))
    return True
