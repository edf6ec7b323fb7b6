"""What every command line of the project shares: parsing into dataclasses, logging, and a clean exit."""

from __future__ import annotations

import logging
from typing import Callable, Optional


def train_and_save(trainer, resume: Optional[str]) -> None:
    """Train, then save the model; a run stopped by a signal (its checkpoint saved) ends with the signal's code."""
    trainer.train(resume_from_checkpoint=resume)
    exit_code = trainer.save_final()
    if exit_code is not None:
        raise SystemExit(exit_code)


def run_cli(main: Callable, *argument_classes) -> None:
    """Parse the command line (and any `--config` recipe) into the dataclasses, then call `main` with them."""
    from trl import TrlParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main(*TrlParser(argument_classes).parse_args_and_config())
    finally:
        # A process group left to the interpreter's exit can abort a process that has finished its work (seen as
        # "terminate called without an active exception" under torchrun on the CPU), failing a complete run.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
