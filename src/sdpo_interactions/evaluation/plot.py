"""The learning-curve plot of an evaluation: win rate against step, one line per persona the run was judged as, the
in-context oracle of each persona as a horizontal reference line, and the switch points of a persona schedule as
vertical lines, so that learning, reversal and forgetting are visible at a glance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from sdpo_interactions.evaluation.report import ORACLE_LABEL, is_oracle, personas, step_label, write_png


def _short(name: str) -> str:
    return name.rstrip("/").split("/")[-1]


def plot_win_rates(rows: list[dict], path: Path, switches: Sequence[tuple[int, str]] = ()) -> None:
    """Win rate against step with standard-error bars, the 0.5 parity line, each persona's oracle, the switches.

    With one persona the tie rate is drawn too, because a position-biased judge turns pairs into ties, not into
    losses: a flat win rate over a rising tie rate means the judge, not the policy, decided. With several personas
    the plot would drown in tie rates; the table has them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = personas(rows)
    checkpoints = [r for r in rows if not is_oracle(r)]
    fig, ax = plt.subplots(figsize=(5.6 if len(styles) > 1 else 5, 3.6), dpi=100)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="parity")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, style in enumerate(styles):
        colour = colours[i % len(colours)]
        mine = [r for r in checkpoints if r["style"] == style]
        _draw_persona(ax, mine, colour, "win rate (ties excluded)" if len(styles) == 1 else style)
        for oracle in (r for r in rows if is_oracle(r) and r["style"] == style and not math.isnan(r["win_rate"])):
            ax.axhline(oracle["win_rate"], color=colour, linestyle="-.", linewidth=1,
                       label=ORACLE_LABEL if len(styles) == 1 else f"{ORACLE_LABEL} ({style})")
        if len(styles) == 1:
            tied = [r for r in mine if not math.isnan(r["tie_rate"])]
            if tied:
                ax.plot([r["step"] for r in tied], [r["tie_rate"] for r in tied], marker="s", linestyle=":",
                        color="tab:grey", label="tie rate")
    if not any(not math.isnan(r["win_rate"]) for r in checkpoints):
        ax.text(0.5, 0.6, "no decisive pair: win rate undefined", transform=ax.transAxes, ha="center", fontsize=8)
    for step, style in switches:
        ax.axvline(step, color="black", linestyle=":", linewidth=1)
        ax.text(step, 1.04, f" -> {style}", fontsize=6, va="top", ha="left")
    ticks = {r["step"]: r for r in checkpoints}
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels([step_label(ticks[step]) for step in sorted(ticks)], fontsize=7)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("checkpoint step (interactions)")
    ax.set_ylabel("rate vs baseline")
    judged = f"as the {styles[0]} user" if len(styles) == 1 else "as each persona of the schedule"
    ax.set_title(f"baseline {_short(rows[0]['baseline'])}\njudge {_short(rows[0]['judge_model'])} {judged}",
                 fontsize=8)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    write_png(fig, path)


def _draw_persona(ax, rows: list[dict], colour: str, label: str) -> None:
    decisive = [r for r in rows if not math.isnan(r["win_rate"])]
    if decisive:
        ax.errorbar([r["step"] for r in decisive], [r["win_rate"] for r in decisive],
                    yerr=[r["stderr"] for r in decisive], marker="o", capsize=4, color=colour, label=label)
