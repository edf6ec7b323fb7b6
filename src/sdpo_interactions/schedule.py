"""A run's step schedule, computed once: optimizer steps, interactions and checkpoint steps, from the settings.

The launch scripts print it before a run (`python -m sdpo_interactions.schedule --config RECIPE --train_n N ...`)
and the training commands log it at their start, so both state what the Trainer will do. It follows TRL 0.24's
rules: `GRPOConfig.__post_init__` derives `steps_per_generation` and `generation_batch_size`; `RepeatSampler` keeps
whole generation batches of `generation_batch_size // num_generations` samples (each repeated `num_generations`
times, the batch `num_iterations * steps_per_generation` times); the Trainer makes `ceil(batches / GA)` optimizer
steps of each epoch, `ceil(num_train_epochs * that)` in all unless `max_steps` is set, and saves every `save_steps`
steps and at the last one. An interaction is one answer with the user's reply to it. Torch-free, so a dry run is
quick.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional

logger = logging.getLogger(__name__)

# The defaults of OnlineSDPOConfig (and OfflineSDPOConfig) for the fields the schedule reads; a test keeps them equal.
DEFAULTS = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_generations": 1,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "save_strategy": "steps",
    "save_steps": 500,
    "steps_per_generation": None,
    "generation_batch_size": None,
    "num_iterations": 1,
}
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")


class ScheduleError(ValueError):
    """Settings no run could start with (TRL or the Trainer would refuse them)."""


@dataclass(frozen=True)
class Schedule:
    """What a run with these settings does. `checkpoints` is None when they depend on evaluation (`best`)."""

    samples: int  # training samples (prompts online, logged answers offline)
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    num_generations: int  # answers per sample in a generation batch
    num_iterations: int  # optimizer passes over each generated answer
    samples_per_generation: int  # distinct samples in one generation batch; an epoch uses whole batches only
    steps_per_epoch: int
    steps: int
    interactions: int  # answers generated and replied to over the whole run
    checkpoints: Optional[tuple[int, ...]]
    save_strategy: str
    save_every: int  # steps between checkpoints under save_strategy `steps`

    @property
    def answers_per_step(self) -> int:
        """Answers each optimizer step trains on, over all processes."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch if self.steps_per_epoch else 0.0

    @property
    def unused_per_epoch(self) -> int:
        """Samples each epoch leaves out (the sampler's incomplete last generation batch)."""
        return self.samples % self.samples_per_generation


def generation_batch(
    *,
    per_device_train_batch_size: int,
    world_size: int,
    gradient_accumulation_steps: int,
    num_generations: int,
    steps_per_generation: Optional[int] = None,
    generation_batch_size: Optional[int] = None,
) -> tuple[int, int]:
    """(steps_per_generation, generation_batch_size) as GRPOConfig.__post_init__ derives them from the flags."""
    global_batch = per_device_train_batch_size * world_size
    if steps_per_generation is not None and generation_batch_size is not None:
        raise ScheduleError("steps_per_generation and generation_batch_size cannot both be set")
    if generation_batch_size is not None:
        if generation_batch_size % global_batch:
            raise ScheduleError(f"generation_batch_size ({generation_batch_size}) must be divisible by the global "
                                f"batch size ({per_device_train_batch_size} x {world_size} processes)")
        steps_per_generation = generation_batch_size // global_batch
    elif steps_per_generation is None:
        steps_per_generation = gradient_accumulation_steps
    generation_batch_size = global_batch * steps_per_generation
    if generation_batch_size % num_generations:
        raise ScheduleError(f"generation_batch_size ({generation_batch_size}) must be divisible by num_generations "
                            f"({num_generations})")
    return steps_per_generation, generation_batch_size


def save_interval(steps: int, save_steps: float) -> int:
    """Steps between checkpoints: `save_steps`, or that share of all steps when it is under 1 (as the Trainer)."""
    return math.ceil(steps * save_steps) if save_steps < 1 else int(save_steps)


def checkpoint_steps(
    *, steps: int, steps_per_epoch: int, save_strategy: str, save_steps: float
) -> Optional[tuple[int, ...]]:
    """The global steps the Trainer saves at (DefaultFlowCallback): every `save_interval` steps and the last step,
    or each epoch's end (the last one possibly cut short by max_steps); None for `best` (when evaluation improves)."""
    if save_strategy == "best":
        return None
    if steps == 0 or save_strategy == "no":
        return ()
    if save_strategy == "epoch":
        return tuple(sorted({min(end, steps) for end in range(steps_per_epoch, steps + steps_per_epoch,
                                                                  steps_per_epoch)}))
    every = save_interval(steps, save_steps)
    return tuple(sorted({*range(every, steps + 1, every), steps}))


def compute_schedule(
    *,
    samples: int,
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    num_generations: int = DEFAULTS["num_generations"],
    num_train_epochs: float = DEFAULTS["num_train_epochs"],
    max_steps: int = DEFAULTS["max_steps"],
    save_strategy: str = DEFAULTS["save_strategy"],
    save_steps: float = DEFAULTS["save_steps"],
    steps_per_generation: Optional[int] = None,
    generation_batch_size: Optional[int] = None,
    num_iterations: int = DEFAULTS["num_iterations"],
) -> Schedule:
    """The schedule of a run on `samples` training samples; `steps_per_generation` and `generation_batch_size` as
    the flags give them (at most one; neither: GRPOConfig's default, gradient_accumulation_steps)."""
    check_settings(samples=samples, save_strategy=save_strategy, save_steps=save_steps,
                   per_device_train_batch_size=per_device_train_batch_size,
                   gradient_accumulation_steps=gradient_accumulation_steps, world_size=world_size,
                   num_generations=num_generations, num_iterations=num_iterations)
    spg, gbs = generation_batch(per_device_train_batch_size=per_device_train_batch_size, world_size=world_size,
                                gradient_accumulation_steps=gradient_accumulation_steps,
                                num_generations=num_generations, steps_per_generation=steps_per_generation,
                                generation_batch_size=generation_batch_size)
    per_generation = gbs // num_generations
    generations_per_epoch = samples // per_generation
    # Each process's dataloader yields every generation batch num_iterations * spg times, one micro-batch each.
    repeats = num_iterations * spg
    steps_per_epoch = math.ceil(generations_per_epoch * repeats / gradient_accumulation_steps)
    if steps_per_epoch == 0:
        steps = 0
    elif max_steps > 0:
        steps = max_steps
    else:
        steps = math.ceil(num_train_epochs * steps_per_epoch)
    full_epochs, rest = divmod(steps, steps_per_epoch) if steps_per_epoch else (0, 0)
    # A new generation batch every `repeats` micro-batches; each epoch starts with one (it holds whole batches),
    # and every step short of the epoch's end takes gradient_accumulation_steps micro-batches.
    generations = full_epochs * generations_per_epoch + math.ceil(rest * gradient_accumulation_steps / repeats)
    checkpoints = checkpoint_steps(steps=steps, steps_per_epoch=steps_per_epoch, save_strategy=save_strategy,
                                   save_steps=save_steps)
    return Schedule(
        samples=samples, per_device_train_batch_size=per_device_train_batch_size, world_size=world_size,
        gradient_accumulation_steps=gradient_accumulation_steps, num_generations=num_generations,
        num_iterations=num_iterations, samples_per_generation=per_generation, steps_per_epoch=steps_per_epoch,
        steps=steps, interactions=generations * gbs, checkpoints=checkpoints, save_strategy=save_strategy,
        save_every=save_interval(steps, save_steps) if save_strategy == "steps" else 0,
    )


def check_settings(*, samples: int, save_strategy: str, save_steps: float, **positive: int) -> None:
    """Every problem at once, as one error."""
    problems = [f"{name} must be a positive integer, got {value!r}" for name, value in positive.items()
                if not (isinstance(value, int) and value > 0)]
    if not (isinstance(samples, int) and samples >= 0):
        problems.append(f"the number of samples must be >= 0, got {samples!r}")
    if save_strategy not in SAVE_STRATEGIES:
        problems.append(f"save_strategy must be one of {', '.join(SAVE_STRATEGIES)}, got {save_strategy!r}")
    elif save_strategy == "steps" and not save_steps > 0:
        problems.append(f"save_steps must be > 0, got {save_steps!r}")
    if problems:
        raise ScheduleError("; ".join(problems))


def schedule_of(args, samples: int) -> Schedule:
    """The schedule of a parsed OnlineSDPOConfig / OfflineSDPOConfig, whose GRPOConfig has set both
    steps_per_generation and generation_batch_size (the first one is enough)."""
    settings = {name: getattr(args, name) for name in DEFAULTS if name != "generation_batch_size"}
    settings["save_strategy"] = str(getattr(args.save_strategy, "value", args.save_strategy))  # an enum there
    return compute_schedule(samples=samples, world_size=args.world_size, **settings)


# ---------------------------------------------------------------------------------------------------------------
# What is printed and logged
# ---------------------------------------------------------------------------------------------------------------


def _count(n: int, word: str, plural: str = "s") -> str:
    return f"{n} {word}{'' if n == 1 else plural}"


def describe_step(*, per_device_train_batch_size: int, gradient_accumulation_steps: int, world_size: int,
                  num_generations: int, num_iterations: int, samples_name: str) -> str:
    answers = per_device_train_batch_size * gradient_accumulation_steps * world_size
    line = (f"schedule: {answers} {'interactions' if num_iterations == 1 else 'answers'} a step "
            f"({_count(per_device_train_batch_size, 'answer')} a process x "
            f"{_count(gradient_accumulation_steps, 'accumulation step')} x {_count(world_size, 'process', 'es')}, "
            f"{num_generations} per {samples_name.removesuffix('s')}, one user reply each)")
    if num_iterations > 1:
        line += (f"; each answer is trained on {num_iterations} times (num_iterations): "
                 f"{answers / num_iterations:g} new interactions a step")
    return line


def describe(schedule: Schedule, samples_name: str = "samples") -> list[str]:
    """The schedule in three lines: per step, in all, and the checkpoints."""
    s = schedule
    lines = [describe_step(per_device_train_batch_size=s.per_device_train_batch_size,
                           gradient_accumulation_steps=s.gradient_accumulation_steps, world_size=s.world_size,
                           num_generations=s.num_generations, num_iterations=s.num_iterations,
                           samples_name=samples_name)]
    epochs = f"{s.epochs:.3g} epoch{'' if s.epochs == 1 else 's'}"
    lines.append(f"  {s.samples} {samples_name} -> {_count(s.steps_per_epoch, 'step')} an epoch, "
                 f"{_count(s.steps, 'step')} in all ({epochs}), {s.interactions} interactions")
    if s.unused_per_epoch and s.steps:
        lines.append(f"  each epoch leaves {s.unused_per_epoch} {samples_name} out: generation batches hold "
                     f"{s.samples_per_generation} {samples_name} each, and only whole ones are used")
    if s.checkpoints is None:
        lines.append("  checkpoints: whenever the evaluation metric improves (save_strategy best)")
    else:
        why = {"steps": f"every {_count(s.save_every, 'step')} and the last step", "epoch": "at each epoch's end",
               "no": "save_strategy no"}[s.save_strategy]
        lines.append(f"  checkpoints at steps: {' '.join(map(str, s.checkpoints)) or 'none'}"
                     + (f" ({why})" if s.steps else ""))
    return lines


def warnings_for(schedule: Schedule, samples_name: str = "samples") -> list[str]:
    if schedule.steps:
        return []
    return [f"{schedule.samples} {samples_name} are less than one generation batch of "
            f"{schedule.samples_per_generation}: nothing would train"]


def log_schedule(args, samples: int, samples_name: str = "samples") -> Optional[Schedule]:
    """Log the run's schedule at its start (the lines a launch script's dry run printed for the same settings).

    Settings TRL accepted but this module does not are this module's bug: they cost the printout, not the run."""
    try:
        schedule = schedule_of(args, samples)
    except ScheduleError as err:
        logger.warning("schedule: n/a (%s)", err)
        return None
    for line in describe(schedule, samples_name):
        logger.info("%s", line)
    for warning in warnings_for(schedule, samples_name):
        logger.warning("%s", warning)
    return schedule


# ---------------------------------------------------------------------------------------------------------------
# Command line: python -m sdpo_interactions.schedule --config RECIPE --train_n N --world_size W [run flags]
# ---------------------------------------------------------------------------------------------------------------

FIELD_TYPES = {"per_device_train_batch_size": int, "gradient_accumulation_steps": int, "num_generations": int,
               "num_train_epochs": float, "max_steps": int, "save_strategy": str, "save_steps": float,
               "steps_per_generation": int, "generation_batch_size": int, "num_iterations": int}


def read_yaml_mapping(path: str, what: str = "recipe") -> dict:
    """A YAML file of field: value (a recipe, an accelerate config), or a ScheduleError saying what is wrong."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as err:
        raise ScheduleError(f"cannot read the {what} {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ScheduleError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(data, dict):
        raise ScheduleError(f"{path}: the {what} must be a mapping of field: value, got {type(data).__name__}")
    return data


def read_recipe(path: str) -> dict:
    """The schedule's fields from a recipe (the run's --config); other keys are the run's business."""
    recipe = read_yaml_mapping(path)
    settings, problems = {}, []
    for name, kind in FIELD_TYPES.items():
        if recipe.get(name) is not None:
            try:
                settings[name] = kind(recipe[name])
            except (TypeError, ValueError):
                problems.append(f"{path}: {name}: expected {kind.__name__}, got {recipe[name]!r}")
    if problems:
        raise ScheduleError("; ".join(problems))
    return settings


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sdpo_interactions.schedule", allow_abbrev=False, exit_on_error=False,
        description="Print the step schedule of a training run: the run's own flags (any others are ignored), with "
                    "--config read underneath them as train.py reads it.",
    )
    parser.add_argument("--config", help="the run's recipe (YAML of GRPOConfig fields)")
    parser.add_argument("--train_n", "--train-n", type=int, help="training samples (unset: known once loaded)")
    parser.add_argument("--world_size", type=int, default=1, help="processes over all machines (1)")
    parser.add_argument("--samples_name", default="samples", help="what a sample is called: prompts, samples")
    for name, kind in FIELD_TYPES.items():
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", type=kind, dest=name)
    try:
        args, _ = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ScheduleError(str(err)) from err
    return args


def schedule_lines(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(lines, warnings) for the parsed command line: flags over the recipe over the config's defaults."""
    settings = {**DEFAULTS, **(read_recipe(args.config) if args.config else {}),
                **{k: getattr(args, k) for k in FIELD_TYPES if getattr(args, k) is not None}}
    schedule = compute_schedule(samples=args.train_n or 0, world_size=args.world_size, **settings)
    if args.train_n is None:
        return [describe(schedule, args.samples_name)[0],
                f"  the number of {args.samples_name} is known once the data is loaded (--train_n unset: all are "
                "used); the run logs its schedule when it starts"], []
    return describe(schedule, args.samples_name), warnings_for(schedule, args.samples_name)


def print_report(report: Callable[[], tuple[list[str], list[str]]], errors: tuple[type, ...] = (ScheduleError,)
                 ) -> int:
    """Print what `report()` returns, lines to stdout and warnings to stderr; one of `errors` is one `error:` line
    and status 2. The scripts' printouts (this schedule, the persona schedule) share it."""
    try:
        lines, warnings = report()
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Print the schedule (stdout) and any warning (stderr); a bad setting is one `error:` line and status 2."""
    return print_report(lambda: schedule_lines(parse_command_line(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
