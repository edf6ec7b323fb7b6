"""What every command line of the project shares: parsing into dataclasses, logging, and a clean exit.

A known input error (`run_files.InputError`, which the library's checks raise) reaches the user as one
`error: ...` line and exit status 2 (1 for a data file's bad lines), not as a traceback; any other exception keeps
its traceback, since that one is a bug.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from sdpo_interactions.run_files import InputError


def train_and_save(trainer, resume: Optional[str]) -> None:
    """Train, then save the model; a run stopped by a signal (its checkpoint saved) ends with the signal's code."""
    trainer.train(resume_from_checkpoint=resume)
    exit_code = trainer.save_final()
    if exit_code is not None:
        raise SystemExit(exit_code)


def exit_with_error(err: Exception) -> None:
    """Print `err` as one `error: ...` line (an InputError listing bad lines adds them below) and exit."""
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(getattr(err, "exit_code", InputError.exit_code))


@contextmanager
def input_errors_as_one_line() -> Iterator[None]:
    try:
        yield
    except InputError as err:
        exit_with_error(err)


def parse_arguments(argument_classes: tuple, args: Optional[list[str]] = None, **parser_options) -> tuple:
    """The command line (and any `--config` recipe) parsed into the dataclasses. A dataclass's `__post_init__`
    checks its flags, TRL's and transformers' included, and refuses with a ValueError: that is the user's input
    (a wrong flag, a recipe for a GPU on a CPU), so it ends as one line too, as does a missing `--config` file."""
    from trl import TrlParser

    try:
        return TrlParser(argument_classes, **parser_options).parse_args_and_config(args=args)
    except (ValueError, FileNotFoundError) as err:
        exit_with_error(err)


def run_cli(main: Callable, *argument_classes) -> None:
    """Parse the command line into the dataclasses, then call `main` with them; input errors end as one line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parsed = parse_arguments(argument_classes)
        with input_errors_as_one_line():
            main(*parsed)
    finally:
        # A process group left to the interpreter's exit can abort a process that has finished its work (seen as
        # "terminate called without an active exception" under torchrun on the CPU), failing a complete run.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
