"""The evaluation's reports: the win-rate table (Markdown and CSV) and the learning-curve plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from sdpo_interactions.run_files import write_atomic

TABLE_NAME = "win_rates"
PLOT_NAME = "win_rate.png"
TABLE_COLUMNS = ("step", "interactions", "checkpoint", "style", "pairs", "wins", "losses", "ties", "invalid", "win_rate", "stderr",
                 "tie_rate", "baseline", "judge_model", "max_new_tokens", "mode")
# What the interactions column counts, by the run's mode.
INTERACTIONS_MEANING = {
    "online": "answers the simulated user had replied to when the checkpoint was saved, over all processes",
    "offline": "logged (answer, user reply) samples the checkpoint had trained on, over all processes",
}


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| step | interactions | pairs | wins | losses | ties | invalid | win rate ± s.e. | tie rate |",
        "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in rows:
        rate = "n/a" if math.isnan(r["win_rate"]) else f"{r['win_rate']:.3f} ± {r['stderr']:.3f}"
        interactions = "n/a" if r["interactions"] is None else r["interactions"]
        lines.append(
            f"| {r['step']} | {interactions} | {r['pairs']} | {r['wins']} | {r['losses']} | {r['ties']} | {r['invalid']} | {rate} | "
            f"{_fmt(r['tie_rate'])} |"
        )
    return caption(rows) + "\n\n" + "\n".join(lines) + "\n"


def caption(rows: list[dict]) -> str:
    first = rows[0]
    lengths = sorted({r["max_new_tokens"] for r in rows})
    interactions = "; ".join(INTERACTIONS_MEANING[mode] for mode in dict.fromkeys(r["mode"] for r in rows))
    return (
        f"Win rate of each checkpoint against `{first['baseline']}`, judged by `{first['judge_model']}` as the "
        f"`{first['style']}` user; responses of up to {' or '.join(map(str, lengths))} new tokens; "
        "wins / (wins + losses), ties excluded, s.e. = sqrt(p(1-p)/(wins + losses)); tie rate among pairs with a "
        f"valid verdict. Interactions: {interactions}."
    )


def csv_table(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None or isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buffer.getvalue()


def step_label(row: dict) -> str:
    return str(row["step"]) if row["interactions"] is None else f"{row['step']}\n({row['interactions']})"


def plot_win_rates(rows: list[dict], path: Path) -> None:
    """Win rate against step with standard-error bars, the tie rate beside it, and the 0.5 parity line (PNG).

    The tie rate is drawn too because a position-biased judge turns pairs into ties, not into losses: a flat
    win rate over a rising tie rate means the judge, not the policy, decided.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decisive = [r for r in rows if not math.isnan(r["win_rate"])]
    tied = [r for r in rows if not math.isnan(r["tie_rate"])]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="parity")
    if decisive:
        ax.errorbar(
            [r["step"] for r in decisive], [r["win_rate"] for r in decisive], yerr=[r["stderr"] for r in decisive],
            marker="o", capsize=4, label="win rate (ties excluded)",
        )
    else:
        ax.text(0.5, 0.6, "no decisive pair: win rate undefined", transform=ax.transAxes, ha="center", fontsize=8)
    if tied:
        ax.plot([r["step"] for r in tied], [r["tie_rate"] for r in tied], marker="s", linestyle=":",
                color="tab:grey", label="tie rate")
    ax.set_xticks([r["step"] for r in rows])
    ax.set_xticklabels([step_label(r) for r in rows], fontsize=7)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("checkpoint step (interactions)")
    ax.set_ylabel("rate vs baseline")
    judge = rows[0]["judge_model"].rstrip("/").split("/")[-1]
    baseline = rows[0]["baseline"].rstrip("/").split("/")[-1]
    ax.set_title(f"baseline {baseline}\njudge {judge} as the {rows[0]['style']} user", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    write_png(fig, path)


def write_png(fig, path: Path) -> None:
    """Save a matplotlib figure as a PNG, atomically, and close it (a reader never sees half an image)."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    try:
        fig.savefig(png, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, png.getvalue())


def write_reports(rows: list[dict], out_dir: Path) -> None:
    write_atomic(out_dir / f"{TABLE_NAME}.md", markdown_table(rows))
    write_atomic(out_dir / f"{TABLE_NAME}.csv", csv_table(rows))
    plot_win_rates(rows, out_dir / PLOT_NAME)
