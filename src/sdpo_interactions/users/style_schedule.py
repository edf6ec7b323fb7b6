"""A persona schedule: which persona plays the user at each optimizer step of a run, for the paper's preference flip
(Fig. 4) and its continual run (Fig. 6).

    --style_schedule concise_casual_beginner:256,detailed_professional_expert

Each entry is a style and the number of interactions it lasts (answers the user replied to, counted over all
processes); the last entry has no count and lasts to the end of the run. A switch falls on an optimizer-step
boundary: the run's batch arithmetic (sdpo_interactions.schedule) turns each count into steps, and a count that is
not a whole number of steps is refused, naming the nearest counts that are. The persona of an answer is the one
active at the step the answer was generated, so a resumed run continues with the persona of its step.

Torch-free, so the launch scripts print the switch points at once:
`python -m sdpo_interactions.users.style_schedule --style_schedule SPEC --config RECIPE --train_n N ...`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from sdpo_interactions.personas import persona_catalogue, resolve_style
from sdpo_interactions.run_files import InputError
from sdpo_interactions.schedule import ScheduleError, generation_batch, print_report

FLAG = "--style_schedule"


@dataclass(frozen=True)
class Phase:
    """One persona of a schedule and the interactions it lasts (None: to the end of the run)."""

    style: str
    persona: str
    interactions: Optional[int]


def parse_style_schedule(spec: str, persona_file: Optional[str] = None) -> tuple[Phase, ...]:
    """The phases of `style:count,style:count,...,style`; every problem is reported at once, as one InputError."""
    catalogue = persona_catalogue(persona_file)
    entries = [entry.strip() for entry in spec.split(",")]
    phases, problems, unknown = [], [], False
    for number, entry in enumerate(entries, start=1):
        last = number == len(entries)
        name, has_count, count = (part.strip() for part in entry.partition(":"))
        try:
            style = resolve_style(name, catalogue) if name else None
        except InputError:
            problems.append(f"entry {number}: unknown style {name!r}")
            style, unknown = None, True
        if not name:
            problems.append(f"entry {number} ({entry!r}) names no style")
        interactions = None
        if has_count and last:
            problems.append(f"entry {number} ({entry!r}): the last persona lasts to the end of the run, so it takes "
                            f"no count; write {name or 'STYLE'}")
        elif has_count:
            interactions = int(count) if count.isdigit() and int(count) > 0 else None
            if interactions is None:
                problems.append(f"entry {number} ({entry!r}): the count must be a positive number of interactions")
        elif not last:
            problems.append(f"entry {number} ({entry!r}) needs a count: STYLE:INTERACTIONS")
        if style is not None:
            phases.append(Phase(style, catalogue[style], interactions))
    if len(entries) < 2:
        problems.append("a schedule has at least two personas (for one, use --style)")
    if unknown:
        problems.append(f"known styles: {', '.join(sorted(catalogue))}")
    if problems:
        raise InputError(f"{FLAG} {spec!r}: " + "; ".join(problems))
    return tuple(phases)


@dataclass(frozen=True)
class BatchArithmetic:
    """How a run's answers fall into generation batches and optimizer steps (TRL's rules, schedule.py)."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    steps_per_generation: int
    num_iterations: int = 1

    @classmethod
    def of(cls, args) -> "BatchArithmetic":
        """From a parsed OnlineSDPOConfig, whose GRPOConfig has derived steps_per_generation."""
        return cls(args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size,
                   args.steps_per_generation, args.num_iterations)

    @property
    def generation_answers(self) -> int:
        """Answers of one generation batch, over all processes: each gets one reply."""
        return self.per_device_train_batch_size * self.world_size * self.steps_per_generation

    def steps_for(self, interactions: int) -> Fraction:
        """Optimizer steps taken while `interactions` answers are generated (a generation batch feeds
        steps_per_generation * num_iterations micro-batches of each process, a step takes GA of them)."""
        generations = Fraction(interactions, self.generation_answers)
        return generations * self.steps_per_generation * self.num_iterations / self.gradient_accumulation_steps

    @property
    def interactions_per_step(self) -> Fraction:
        return 1 / self.steps_for(1)

    @property
    def unit(self) -> int:
        """The fewest interactions that end at a step boundary: whole generation batches starting a step."""
        repeats = self.steps_per_generation * self.num_iterations
        generations = self.gradient_accumulation_steps // math.gcd(self.gradient_accumulation_steps, repeats)
        return generations * self.generation_answers

    def describe(self) -> str:
        return (f"{float(self.interactions_per_step):g} interactions a step ({self.per_device_train_batch_size} a "
                f"process x {self.gradient_accumulation_steps} accumulation x {self.world_size} processes)")


def whole_steps_problem(phase: Phase, arithmetic: BatchArithmetic) -> Optional[str]:
    """Why `phase`'s count does not end on a step boundary, with the nearest counts that do; None when it does."""
    count, unit = phase.interactions, arithmetic.unit
    if count is None or count % unit == 0:
        return None
    lower, upper = (count // unit) * unit, (count // unit + 1) * unit
    options = [n for n in (lower, upper) if n > 0]
    nearest = " or ".join(f"{n} ({arithmetic.steps_for(n)} steps)" for n in options)
    return (f"{phase.style}:{count} is {float(arithmetic.steps_for(count)):.3g} optimizer steps at "
            f"{arithmetic.describe()}; a switch falls on a step boundary, so use {nearest}")


@dataclass(frozen=True)
class StyleSchedule:
    """A parsed schedule on a run's batch arithmetic: the step at which each persona starts and ends.

    Steps count completed optimizer steps, as `state.global_step` and `checkpoint-<N>` do: a phase with
    `start_step` 0 and `end_step` 16 answers the samples generated during the first 16 steps, so checkpoint-16 is the
    last one trained on it alone, and the token log's records of steps 0-15 carry its style.
    """

    spec: str
    phases: tuple[Phase, ...]
    arithmetic: BatchArithmetic

    @classmethod
    def build(cls, spec: str, arithmetic: BatchArithmetic, persona_file: Optional[str] = None) -> "StyleSchedule":
        phases = parse_style_schedule(spec, persona_file)
        problems = [p for p in (whole_steps_problem(phase, arithmetic) for phase in phases) if p]
        if problems:
            raise InputError(f"{FLAG} {spec!r}: " + "; ".join(problems))
        return cls(spec, phases, arithmetic)

    @property
    def end_steps(self) -> tuple[Optional[int], ...]:
        """The step at which each phase ends (None for the last, which lasts to the end)."""
        ends, total = [], 0
        for phase in self.phases[:-1]:
            total += phase.interactions
            ends.append(int(self.arithmetic.steps_for(total)))
        return (*ends, None)

    @property
    def switch_steps(self) -> tuple[int, ...]:
        return self.end_steps[:-1]

    def start_step(self, index: int) -> int:
        return 0 if index == 0 else self.end_steps[index - 1]

    def phase_index_at(self, step: int) -> int:
        """The phase that answers samples generated when `step` optimizer steps are complete."""
        return next(i for i, end in enumerate(self.end_steps) if end is None or step < end)

    def phase_at(self, step: int) -> Phase:
        return self.phases[self.phase_index_at(step)]

    def interactions_seen(self, answers: int) -> list[int]:
        """How many of a run's first `answers` answers (over all processes) each phase's persona replied to."""
        seen, start = [], 0
        for phase in self.phases:
            stop = answers if phase.interactions is None else min(answers, start + phase.interactions)
            seen.append(max(stop - start, 0))
            start += phase.interactions or 0
        return seen

    def settings(self, *, step: int, answers: int) -> dict:
        """What the run settings of a checkpoint saved after `step` steps record: the schedule, the persona whose
        replies its last step learned from (`active_style`), and the answers each persona has replied to so far, of
        the run's `answers` (an evaluation judges every checkpoint under each of these personas)."""
        per_step = self.arithmetic.interactions_per_step
        return {
            "spec": self.spec,
            "interactions_per_step": int(per_step) if per_step.denominator == 1 else float(per_step),
            "active_style": self.phase_at(max(step - 1, 0)).style,
            "phases": [
                {"style": phase.style, "persona": phase.persona, "interactions": phase.interactions,
                 "start_step": self.start_step(i), "end_step": self.end_steps[i], "interactions_seen": seen}
                for i, (phase, seen) in enumerate(zip(self.phases, self.interactions_seen(answers)))
            ],
        }

    def describe(self, total_steps: Optional[int] = None) -> list[str]:
        """The phases and switch points in a few lines, as the scripts print them and the run logs them."""
        lines = [f"persona schedule: {self.spec}, {self.arithmetic.describe()}"]
        for i, phase in enumerate(self.phases):
            start, end = self.start_step(i), self.end_steps[i]
            first = int(self.arithmetic.interactions_per_step * start) + 1
            if end is None and total_steps is None:
                lines.append(f"  steps {start + 1}- (interactions {first}-): {phase.style}, to the end of the run")
            elif end is None:
                last = int(self.arithmetic.interactions_per_step * total_steps)
                lines.append(f"  steps {start + 1}-{total_steps} (interactions {first}-{last}): {phase.style}, to "
                             "the end of the run")
            else:
                lines.append(f"  steps {start + 1}-{end} (interactions {first}-{first + phase.interactions - 1}): "
                             f"{phase.style}")
        for step, before, after in zip(self.switch_steps, self.phases, self.phases[1:]):
            lines.append(f"  switch after step {step}: {before.style} -> {after.style} (checkpoint-{step} is the "
                         f"last one trained on {before.style} alone)")
        return lines

    def warnings(self, total_steps: int, checkpoints: Optional[tuple[int, ...]] = None) -> list[str]:
        """A persona the run never reaches, and a switch no checkpoint marks."""
        found = []
        for step, phase in zip(self.switch_steps, self.phases[1:]):
            if step >= total_steps:
                found.append(f"the run's {total_steps} steps end before step {step}, where {phase.style} would start")
            elif checkpoints is not None and step not in checkpoints:
                found.append(f"no checkpoint is saved at the switch after step {step} (checkpoints: "
                             f"{' '.join(map(str, checkpoints)) or 'none'}); a save_steps that divides {step} marks it")
        return found


# ---------------------------------------------------------------------------------------------------------------
# Command line: python -m sdpo_interactions.users.style_schedule --style_schedule SPEC [the run's flags]
# ---------------------------------------------------------------------------------------------------------------


def schedule_lines(argv: list[str]) -> tuple[list[str], list[str]]:
    """(lines, warnings) for a run's flags (the recipe under them), as sdpo_interactions.schedule reads them."""
    import argparse

    from sdpo_interactions.schedule import DEFAULTS, FIELD_TYPES, compute_schedule, parse_command_line, read_recipe

    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    own.add_argument(FLAG, "--style-schedule", dest="style_schedule", required=True)
    own.add_argument("--persona_file", "--persona-file", dest="persona_file")
    try:
        mine, rest = own.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ScheduleError(str(err)) from err
    args = parse_command_line(rest)
    settings = {**DEFAULTS, **(read_recipe(args.config) if args.config else {}),
                **{k: getattr(args, k) for k in FIELD_TYPES if getattr(args, k) is not None}}
    spg, _ = generation_batch(per_device_train_batch_size=settings["per_device_train_batch_size"],
                              world_size=args.world_size,
                              gradient_accumulation_steps=settings["gradient_accumulation_steps"],
                              num_generations=settings["num_generations"],
                              steps_per_generation=settings["steps_per_generation"],
                              generation_batch_size=settings["generation_batch_size"])
    arithmetic = BatchArithmetic(settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"],
                                 args.world_size, spg, settings["num_iterations"])
    schedule = StyleSchedule.build(mine.style_schedule, arithmetic, mine.persona_file)
    if args.train_n is None:
        return schedule.describe(), []
    run = compute_schedule(samples=args.train_n, world_size=args.world_size, **settings)
    return schedule.describe(run.steps), schedule.warnings(run.steps, run.checkpoints)


def main(argv: Optional[list[str]] = None) -> int:
    """Print the phases and switch points (stdout) and any warning (stderr); a bad schedule is one `error:` line
    and status 2."""
    return print_report(lambda: schedule_lines(sys.argv[1:] if argv is None else argv), (ScheduleError, InputError))


if __name__ == "__main__":
    sys.exit(main())
