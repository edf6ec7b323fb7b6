"""The paper's benchmark table for a run: the base model and every complete checkpoint on IFEval, MMLU-Pro,
AlpacaEval 2 LC and the regression checks (TruthfulQA, HellaSwag, CommonsenseQA), through lm-eval and alpaca-eval.

    python -m sdpo_interactions.cli.eval_benchmarks --run_dir runs/x --benchmarks ifeval mmlu_pro alpaca_eval

Writes <output_dir>/benchmarks.md, .csv and .png, and per model and benchmark the harness's raw output, its log
and result.json. A re-run skips what is already computed with the same settings. `--dry_run` prints each harness's
exact command and runs nothing. The harnesses are the `eval` extra (requirements-eval.txt).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from sdpo_interactions.evaluation.benchmark_report import write_benchmark_reports
from sdpo_interactions.evaluation.benchmarks import (
    BENCHMARKS, AnnotatorSettings, HarnessSettings, check_annotator_key, check_benchmarks, plan_cells, plan_models,
    punkt_data, run_cell, shell_text,
)

logger = logging.getLogger(__name__)


@dataclass
class BenchmarkArguments:
    """Which run, which models, which benchmarks, and where the results go."""

    run_dir: Optional[str] = field(default=None, metadata={"help": "Training output folder holding checkpoint-<N>/."})
    ckpts: list[int] = field(default_factory=list, metadata={
        "help": "Checkpoint steps to evaluate (default: every complete checkpoint-<N>). The base model always is."})
    base_model: Optional[str] = field(default=None, metadata={
        "help": "The base model (default: model_name_or_path in the run's sdpo_run_settings.json)."})
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS), metadata={
        "help": f"Benchmarks to run, from: {', '.join(BENCHMARKS)} (default: all)."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where results go (default <run_dir>/benchmarks)."})
    dry_run: bool = field(default=False, metadata={"help": "Print each harness's exact command; run nothing."})

    def __post_init__(self):
        problems = []
        if self.run_dir is None:
            problems.append("--run_dir is required: the training output folder holding checkpoint-<N>/ folders")
        elif not os.path.isdir(self.run_dir):
            problems.append(f"--run_dir: no such folder: {self.run_dir}")
        try:
            self.benchmarks = check_benchmarks(self.benchmarks)
        except ValueError as err:
            problems.append(str(err))
        if any(step < 0 for step in self.ckpts):
            problems.append(f"--ckpts must be non-negative steps, got {self.ckpts}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.output_dir is None:
            self.output_dir = os.path.join(self.run_dir, "benchmarks")


def main(args: BenchmarkArguments, harness: HarnessSettings, annotator: AnnotatorSettings) -> None:
    output_dir = Path(args.output_dir)
    models = plan_models(args.run_dir, ckpts=args.ckpts, base_model=args.base_model)
    cells = plan_cells(models, args.benchmarks, output_dir, harness, annotator)
    if args.dry_run:
        print(f"{len(models)} models x {len(args.benchmarks)} benchmarks; the harness commands:")
        for cell in cells:
            print(f"# {cell.model.label} / {cell.benchmark.name}\n{shell_text(cell)}")
        print("dry run: nothing was executed")
        return
    check_annotator_key(cells, annotator, os.environ)
    nltk_data = punkt_data(output_dir / "nltk_data") if "ifeval" in args.benchmarks else None
    results, failures = [], []
    # One bar over the (model, benchmark) cells, with counts and an ETA; each harness writes its own log file.
    progress = tqdm(cells, desc="benchmarks", unit="cell")
    for cell in progress:
        progress.set_postfix_str(f"{cell.model.label} / {cell.benchmark.name}")
        try:
            results.append(run_cell(cell, harness, annotator, dict(os.environ), nltk_data))
        except (RuntimeError, FileNotFoundError, KeyError) as err:  # the other cells still run
            logger.error("%s", err)
            failures.append(f"{cell.model.label} / {cell.benchmark.name}")
    if results:
        print(write_benchmark_reports(results, [m.label for m in models], args.benchmarks, output_dir))
    if failures:
        raise SystemExit(f"failed: {', '.join(failures)} (their logs are in {output_dir}); a re-run retries only them")


def cli() -> None:
    from sdpo_interactions.cli.common import run_cli

    run_cli(main, BenchmarkArguments, HarnessSettings, AnnotatorSettings)


if __name__ == "__main__":
    cli()
