"""The benchmark table in the paper's layout (one row per model, one column per benchmark, deltas to the base
model) as Markdown and CSV, and a plot of each benchmark's change against the checkpoint step."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional

from sdpo_interactions.evaluation.benchmarks import BENCHMARKS
from sdpo_interactions.evaluation.report import write_png
from sdpo_interactions.run_files import write_atomic

TABLE_NAME = "benchmarks"
PLOT_NAME = "benchmarks.png"


def table_rows(results: list[dict], labels: list[str]) -> list[dict]:
    """One row per model label, in the given order: {label, step, <benchmark>: result or None, ...}."""
    rows = {label: {"label": label, "step": None} for label in labels}
    for result in results:
        row = rows[result["label"]]
        row["step"] = result["step"]
        row[result["benchmark"]] = result
    return list(rows.values())


def delta(row: dict, base: dict, name: str) -> Optional[float]:
    """Score minus the base model's score, in points; None when either is missing."""
    if row.get(name) is None or base.get(name) is None:
        return None
    return row[name]["value"] - base[name]["value"]


def _cell(row: dict, base: dict, name: str) -> str:
    if row.get(name) is None:
        return "–"
    value, change = row[name]["value"], delta(row, base, name)
    return f"{value:.1f}" if row is base or change is None else f"{value:.1f} ({change:+.1f})"


def markdown_table(rows: list[dict], benchmarks: list[str]) -> str:
    base = rows[0]
    lines = ["| model | step | " + " | ".join(BENCHMARKS[name].label for name in benchmarks) + " |",
             "|---|---:|" + "---:|" * len(benchmarks)]
    for row in rows:
        step = "" if row["step"] is None else str(row["step"])
        lines.append(f"| {row['label']} | {step} | " + " | ".join(_cell(row, base, n) for n in benchmarks) + " |")
    return caption(rows, benchmarks) + "\n\n" + "\n".join(lines) + "\n"


def caption(rows: list[dict], benchmarks: list[str]) -> str:
    """What each column is, which harness versions and which annotator made it; the numbers compare only so."""
    parts = ["Scores in percent; in brackets the change from the base model, in points."]
    for name in benchmarks:
        result = next((row[name] for row in rows if row.get(name)), None)
        if result is None:
            continue
        versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)
        parts.append(f"{BENCHMARKS[name].label}: {BENCHMARKS[name].setting} ({versions}).")
        if name == "alpaca_eval" and result["settings"]["alpaca_metric"] != "length_controlled_winrate":
            parts.append("AlpacaEval here: the plain win rate, not length-controlled (--alpaca_metric win_rate).")
        if name == "alpaca_eval":
            parts.append(f"Annotator: {result['settings']['annotator']}. LC win rates are comparable only between "
                         "results judged by the same annotator.")
    limits = {row[n]["settings"]["limit"] for row in rows for n in benchmarks if row.get(n)}
    if limits - {None}:
        parts.append(f"Only the first {sorted(limits - {None})} documents per task (--limit): not benchmark numbers.")
    return " ".join(parts)


CSV_FIELDS = ("value", "stderr", "delta", "n")


def csv_table(rows: list[dict], benchmarks: list[str]) -> str:
    """Every number with its settings: one line per model, for each benchmark its value, delta, versions, setup."""
    fields = ["label", "step"]
    for name in benchmarks:
        fields += [f"{name}_{part}" for part in (*CSV_FIELDS, "harness_version", "settings")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {"label": row["label"], "step": row["step"]}
        for name in benchmarks:
            result = row.get(name)
            if result is None:
                continue
            line.update({f"{name}_value": result["value"], f"{name}_stderr": result.get("stderr"),
                         f"{name}_delta": delta(row, rows[0], name), f"{name}_n": result.get("n"),
                         f"{name}_harness_version": " ".join(f"{k}=={v}" for k, v in result["versions"].items() if v),
                         f"{name}_settings": _settings_text(result["settings"])})
        writer.writerow({k: ("" if v is None or isinstance(v, float) and math.isnan(v) else v) for k, v in line.items()})
    return buffer.getvalue()


def _settings_text(settings: dict) -> str:
    return "; ".join(f"{k}={v}" for k, v in settings.items() if v is not None and k not in ("model", "benchmark"))


def plot_benchmarks(rows: list[dict], benchmarks: list[str], path: Path) -> None:
    """Each benchmark's change from the base model against the checkpoint step, the base model at step 0 (PNG).

    Changes, not scores: the benchmarks' scales differ by tens of points while the effects are a point or two.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    for name in benchmarks:
        points = [(row["step"] or 0, delta(row, rows[0], name)) for row in rows]
        points = [(step, change) for step, change in points if change is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=BENCHMARKS[name].label)
    ax.set_xlabel("checkpoint step (0 = base model)")
    ax.set_ylabel("change from the base model (points)")
    ax.set_title("benchmarks along the run", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    write_png(fig, path)


def write_benchmark_reports(results: list[dict], labels: list[str], benchmarks: list[str], out_dir: Path) -> str:
    """Write benchmarks.md, benchmarks.csv and benchmarks.png; return the Markdown."""
    rows = table_rows(results, labels)
    text = markdown_table(rows, benchmarks)
    write_atomic(out_dir / f"{TABLE_NAME}.md", text)
    write_atomic(out_dir / f"{TABLE_NAME}.csv", csv_table(rows, benchmarks))
    plot_benchmarks(rows, benchmarks, out_dir / PLOT_NAME)
    return text
