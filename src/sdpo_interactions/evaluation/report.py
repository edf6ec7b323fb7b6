"""The evaluation's reports: the win-rate table (Markdown and CSV) and the learning-curve plot.

A row is one model judged as one persona: a checkpoint (`kind` "checkpoint"), or the in-context oracle (`kind`
"oracle": the baseline with the persona in its system prompt). A run with a persona schedule is judged under every
persona of the schedule, so its rows form a matrix, checkpoints by personas: the Markdown shows it as one table of
win rates and one table of counts per persona, the CSV as one row per cell, and the plot as one line per persona
with the switch points marked and each persona's oracle as a horizontal reference line.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from sdpo_interactions.run_files import write_atomic

TABLE_NAME = "win_rates"
PLOT_NAME = "win_rate.png"
TABLE_COLUMNS = ("step", "interactions", "checkpoint", "kind", "style", "trained_on", "pairs", "wins", "losses",
                 "ties", "invalid", "win_rate", "stderr", "tie_rate", "baseline", "judge_model", "judge_protocol",
                 "max_new_tokens", "mode", "oracle_system_prompt")
# What the interactions column counts, by the run's mode.
INTERACTIONS_MEANING = {
    "online": "answers the simulated user had replied to when the checkpoint was saved, over all processes",
    "offline": "logged (answer, user reply) samples the checkpoint had trained on, over all processes",
}
ORACLE_LABEL = "in-context oracle"


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _rate(row: dict) -> str:
    return "n/a" if math.isnan(row["win_rate"]) else f"{row['win_rate']:.3f} ± {row['stderr']:.3f}"


def is_oracle(row: dict) -> bool:
    return row.get("kind") == "oracle"


def personas(rows: Sequence[dict]) -> list[str]:
    """The personas the rows were judged as, in their order."""
    return list(dict.fromkeys(r["style"] for r in rows))


def counts_table(rows: Sequence[dict]) -> list[str]:
    """One persona's rows: the counts of each checkpoint, the oracle last."""
    lines = ["| step | interactions | pairs | wins | losses | ties | invalid | win rate ± s.e. | tie rate |",
             "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in sorted(rows, key=is_oracle):
        step = ORACLE_LABEL if is_oracle(r) else r["step"]
        interactions = "n/a" if r["interactions"] is None else r["interactions"]
        lines.append(f"| {step} | {interactions} | {r['pairs']} | {r['wins']} | {r['losses']} | {r['ties']} | "
                     f"{r['invalid']} | {_rate(r)} | {_fmt(r['tie_rate'])} |")
    return lines


def matrix_table(rows: Sequence[dict]) -> list[str]:
    """Win rates of every checkpoint under every persona (a column each), the oracle as the last row."""
    styles = personas(rows)
    cell = {(r["step"] if not is_oracle(r) else ORACLE_LABEL, r["style"]): r for r in rows}
    checkpoints = {r["step"]: r for r in rows if not is_oracle(r)}
    lines = ["| step | interactions | trained on | " + " | ".join(f"judged as {s}" for s in styles) + " |",
             "|---:|---:|:---|" + ":---:|" * len(styles)]
    for step, r in sorted(checkpoints.items()):
        interactions = "n/a" if r["interactions"] is None else r["interactions"]
        rates = " | ".join(_rate(cell[step, s]) if (step, s) in cell else "" for s in styles)
        lines.append(f"| {step} | {interactions} | {r.get('trained_on') or ''} | {rates} |")
    if any(is_oracle(r) for r in rows):
        rates = " | ".join(_rate(cell[ORACLE_LABEL, s]) if (ORACLE_LABEL, s) in cell else "" for s in styles)
        lines.append(f"| {ORACLE_LABEL} | | baseline + persona prompt | {rates} |")
    return lines


def markdown_table(rows: list[dict]) -> str:
    """The caption; for several personas the matrix of win rates, then each persona's counts under its heading."""
    styles = personas(rows)
    if len(styles) == 1:
        return caption(rows) + "\n\n" + "\n".join(counts_table(rows)) + "\n"
    parts = [caption(rows), "\n".join(matrix_table(rows))]
    for style in styles:
        parts += [f"Judged as `{style}`:", "\n".join(counts_table([r for r in rows if r["style"] == style]))]
    return "\n\n".join(parts) + "\n"


def caption(rows: list[dict]) -> str:
    first = rows[0]
    lengths = sorted({r["max_new_tokens"] for r in rows})
    modes = dict.fromkeys(r["mode"] for r in rows if not is_oracle(r)) or dict.fromkeys(r["mode"] for r in rows)
    interactions = "; ".join(INTERACTIONS_MEANING[mode] for mode in modes)
    styles = personas(rows)
    judged = f"the `{styles[0]}` user" if len(styles) == 1 else "each persona of the run's schedule in turn"
    text = (
        f"Win rate of each checkpoint against `{first['baseline']}`, judged by `{first['judge_model']}` as "
        f"{judged}; responses of up to {' or '.join(map(str, lengths))} new tokens; "
        "wins / (wins + losses), ties excluded, s.e. = sqrt(p(1-p)/(wins + losses)); tie rate among pairs with a "
        f"valid verdict. Interactions: {interactions}."
    )
    if first.get("judge_protocol", "letter") != "letter":
        text += (" Verdicts read from the log-probabilities of the labels A, B and C (a tie unless A or B leads by "
                 "the margin).")
    if any(is_oracle(r) for r in rows):
        text += (f" The {ORACLE_LABEL} is the baseline with the persona in its system prompt, judged against the "
                 "plain baseline (its system prompt is in win_rates.csv and judgments.jsonl).")
    return text


def csv_table(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None or isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buffer.getvalue()


def step_label(row: dict) -> str:
    return str(row["step"]) if row["interactions"] is None else f"{row['step']}\n({row['interactions']})"


def write_png(fig, path: Path) -> None:
    """Save a matplotlib figure as a PNG, atomically, and close it (a reader never sees half an image)."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    try:
        fig.savefig(png, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, png.getvalue())


def write_reports(rows: list[dict], out_dir: Path, switches: Sequence[tuple[int, str]] = ()) -> None:
    from sdpo_interactions.evaluation.plot import plot_win_rates

    write_atomic(out_dir / f"{TABLE_NAME}.md", markdown_table(rows))
    write_atomic(out_dir / f"{TABLE_NAME}.csv", csv_table(rows))
    plot_win_rates(rows, out_dir / PLOT_NAME, switches)
