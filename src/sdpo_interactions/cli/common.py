"""What every command line of the project shares: parsing into dataclasses, logging, and a clean exit.

A known input error (`run_files.InputError`, which the library's checks raise) reaches the user as one
`error: ...` line and exit status 2 (1 for a data file's bad lines), not as a traceback; so does a run that cannot go
on for a cause outside the code (`run_files.RunError`: a full disk, a user simulator that stopped answering), with
status 1. Any other exception keeps its traceback, since that one is a bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from sdpo_interactions.run_files import InputError, RunError, disk_full_named

logger = logging.getLogger(__name__)


def train_and_save(trainer, resume: Optional[str]) -> None:
    """Train, then save the model and the trainer state (trainer_state.json: the metrics of every logging step); a
    run stopped by a signal has saved its checkpoint already, and ends with the signal's code."""
    trainer.train(resume_from_checkpoint=resume)
    stop = trainer.graceful_stop
    if stop.stopped_at_step is not None:
        logger.warning("Stopped by a signal at step %d, checkpoint saved; continue with --resume_from_checkpoint "
                       "last", stop.stopped_at_step)
        raise SystemExit(stop.exit_code)
    with disk_full_named(trainer.args.output_dir, trainer.record.checkpoint_size):
        trainer.save_model(trainer.args.output_dir)
        trainer.save_state()
    logger.info("Model: %s; token log: %s", trainer.args.output_dir, trainer.token_log.path)


def exit_with_error(err: Exception) -> None:
    """Print `err` as one `error: ...` line (an InputError listing bad lines adds them below) and exit. tqdm writes it,
    so that it starts a line of its own under a progress bar that the error interrupted."""
    from tqdm import tqdm

    tqdm.write(f"error: {err}", file=sys.stderr)
    raise SystemExit(getattr(err, "exit_code", InputError.exit_code))


@contextmanager
def input_errors_as_one_line() -> Iterator[None]:
    try:
        yield
    except (InputError, RunError) as err:
        exit_with_error(err)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only where the help does not state its default itself, and never "(default: None)":
    transformers' parser appends it to every flag, so a help text giving its own default said it twice."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "(default" in text or "; default" in text:
            return text
        return super()._get_help_string(action)


def parse_arguments(argument_classes: tuple, args: Optional[list[str]] = None, **parser_options) -> tuple:
    """The command line (and any `--config` recipe) parsed into the dataclasses. A dataclass's `__post_init__`
    checks its flags, TRL's and transformers' included, and refuses with a ValueError: that is the user's input
    (a wrong flag, a recipe for a GPU on a CPU), so it ends as one line too, as does a missing `--config` file."""
    from trl import TrlParser

    try:
        parser_options.setdefault("formatter_class", HelpFormatter)
        return TrlParser(argument_classes, **parser_options).parse_args_and_config(args=args)
    except (ValueError, FileNotFoundError) as err:
        exit_with_error(err)


def lost_peer(err: BaseException) -> Optional[str]:
    """When a collective failed because another process of the run is gone (killed, out of memory), what to say
    instead of its traceback, which only shows a socket error deep in the backend; None for any other error.

    gloo says "Connection closed by peer" (or reset, or a broken pipe); NCCL and the rendezvous store raise
    torch.distributed's DistError. Only in a run of several processes."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not (isinstance(err, dist.DistError) or any(s in str(err) for s in ("by peer", "Broken pipe"))):
        return None
    return (f"process {dist.get_rank()} of {dist.get_world_size()} lost the others in a collective ({text[:200]}): "
            "another process of this run stopped; the launcher's summary names it. The newest complete checkpoint "
            "is kept: resume with --resume_from_checkpoint last")


def run_cli(main: Callable, *argument_classes) -> None:
    """Parse the command line into the dataclasses, then call `main` with them; input errors end as one line, and so
    does the failed collective of a process whose peer died."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parsed = parse_arguments(argument_classes)
        with input_errors_as_one_line():
            main(*parsed)
    except RuntimeError as err:
        message = lost_peer(err)
        if message is None:
            raise
        exit_with_error(RunError(message))
    finally:
        # A process group left to the interpreter's exit can abort a process that has finished its work (seen as
        # "terminate called without an active exception" under torchrun on the CPU), failing a complete run.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
