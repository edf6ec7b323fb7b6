"""The files a run reads and writes: atomic writes, JSONL with `file:line` errors, appends, run settings.

Torch-free on purpose: data preparation, the caches, evaluation and visualization use it without loading a model
stack. Every writer leaves either the old file or the whole new one, never half a file, so a crash or a kill at any
moment loses at most the record being written.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

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


def iter_jsonl(
    path: str | os.PathLike, *, skip_blank: bool = True, tolerate_torn_tail: bool = False
) -> Iterator[tuple[str, Any]]:
    """Yield (`file:line`, record) for every line; a malformed line raises with its file and line.

    With `tolerate_torn_tail`, an unparsable last line without a newline (a crash mid-append) is skipped with a
    warning instead, since the writer that appends next cuts it off anyway.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            if skip_blank:
                continue
            raise ValueError(f"{where}: empty line (every line must be one JSON record)")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if tolerate_torn_tail and number == len(lines) and not line.endswith("\n"):
                logger.warning("%s: ignoring an incomplete last line (an interrupted write)", where)
                continue
            raise ValueError(f"{where}: malformed JSON ({err.msg}, column {err.colno})") from None
        yield where, record


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
