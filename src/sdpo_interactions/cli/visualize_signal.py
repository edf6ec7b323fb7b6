"""See SDPO's per-token hindsight signal: which tokens the user's follow-up made more or less likely.

Two modes, each writing a self-contained HTML page (tooltips per token) and a PNG of the same:

    # the records a training run logged (default: its last step)
    python visualize_signal.py log --token_log runs/demo/token_logps.jsonl --output_dir runs/demo/signal

    # the paper's sanity check: a relevant follow-up should give structured signal, an unrelated one near zero
    python visualize_signal.py cases --cases data/sample/signal_cases.json \
        --model_name_or_path models/smollm2-135m-instruct --system_prompt general --output_dir runs/signal_cases

Colours: blue where the follow-up made the token more likely (signal = teacher - student log-prob > 0), orange
where it made it less likely, white at 0, on a scale symmetric around 0 whose limit is max |signal| shown (or
--vmax). A run trained with a logit mode (distillation_mode topk_logits or full_logits) records per token the
divergence it optimised; its tokens are drawn by that value instead, from white at 0 to purple, and the colour scale
is labelled with what the divergence is (the record's `value_label`). Cases mode scores through
`OnlineSDPOTrainer.score_signal`, the trainer's own hindsight-context and log-prob code, so what you see is what
training would use.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import os
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.colors import ListedColormap, Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from sdpo_interactions.cli.common import HelpFormatter  # noqa: E402
from sdpo_interactions.run_files import iter_jsonl, write_atomic  # noqa: E402

logger = logging.getLogger(__name__)

NEUTRAL = (255, 255, 255)
# Positive and negative ends are the same colour with red and blue swapped, so equal |signal| looks equally strong.
POSITIVE = (33, 102, 172)
NEGATIVE = (172, 102, 33)
DIVERGENCE = (118, 42, 131)  # a logit mode's per-token divergence, which is never negative
SIGNAL_LABEL = "signal = teacher − student log-prob (blue: more likely given the follow-up)"

# field -> type every token-log record must have (see COMMON.md / sdpo_trainer._token_records)
RECORD_FIELDS = {
    "step": int,
    "prompt": str,
    "completion": str,
    "feedback": str,
    "tokens": list,
    "logp_student": list,
    "logp_teacher": list,
    "signal": list,
}
PER_TOKEN_FIELDS = ("logp_student", "logp_teacher", "signal")
LOGIT_MODES = ("topk_logits", "full_logits")
CASE_FIELDS = ("prompt", "response", "relevant_followup", "unrelated_followup")
CONDITIONS = ("relevant", "unrelated")
DTYPES = ("auto", "float32", "bfloat16", "float16")

# ---------------------------------------------------------------------------------------------------------------
# Colour scale and per-record numbers: pure functions.
# ---------------------------------------------------------------------------------------------------------------


def signal_colour(signal: float, vmax: float) -> tuple[int, int, int]:
    """RGB of one token: linear from white at 0 to POSITIVE at +vmax / NEGATIVE at -vmax, clipped beyond."""
    if not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}")
    t = min(abs(signal) / vmax, 1.0)
    end = POSITIVE if signal > 0 else NEGATIVE
    return tuple(round(n + (e - n) * t) for n, e in zip(NEUTRAL, end))


@dataclass(frozen=True)
class ColourScale:
    """How per-token values become colours: the signal on a scale symmetric around 0, or a logit mode's divergence
    (>= 0) from white at 0 to DIVERGENCE at `vmax`; `label` says what is drawn."""

    vmax: float
    one_sided: bool = False
    label: str = SIGNAL_LABEL

    def colour(self, value: float) -> tuple[int, int, int]:
        if not self.one_sided:
            return signal_colour(value, self.vmax)
        t = min(max(value, 0.0) / self.vmax, 1.0)
        return tuple(round(n + (e - n) * t) for n, e in zip(NEUTRAL, DIVERGENCE))

    @property
    def low(self) -> float:
        return 0.0 if self.one_sided else -self.vmax


def as_scale(scale: Union[float, ColourScale]) -> ColourScale:
    """A plain limit is the signal's symmetric scale."""
    return scale if isinstance(scale, ColourScale) else ColourScale(float(scale))


def drawn_values(record: dict) -> list[float]:
    """What a record's tokens are coloured by: the value its objective optimised (a logit mode's divergence), or
    the signal (sampled_token, older logs, and the cases mode)."""
    if record.get("distillation_mode") in LOGIT_MODES:
        return record["value"]
    return record["signal"]


def colour_scale(records: list[dict], vmax: Optional[float] = None) -> ColourScale:
    """The scale of `records`, which must all be drawn by the same kind of value."""
    labels = {r.get("value_label") if r.get("distillation_mode") in LOGIT_MODES else None for r in records}
    if len(labels) > 1:
        raise ValueError(f"the chosen records optimised different values ({', '.join(map(str, labels))}): "
                         "choose the steps of one run setting with --steps")
    (label,) = labels or {None}
    limit = scale_limit([{"signal": drawn_values(r)} for r in records], vmax)
    return ColourScale(limit) if label is None else ColourScale(limit, one_sided=True, label=label)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def text_colour(rgb: tuple[int, int, int]) -> str:
    """Black or white, whichever reads better on `rgb` (by relative luminance)."""
    luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255
    return "#000000" if luminance > 0.45 else "#ffffff"


def scale_limit(records: list[dict], vmax: Optional[float] = None) -> float:
    """The colour scale's limit: `vmax` if given, else max |signal| over `records` (1.0 if all are 0)."""
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be > 0, got {vmax}")
        return float(vmax)
    largest = max((abs(s) for r in records for s in r["signal"]), default=0.0)
    return largest if largest > 0 else 1.0


def record_stats(record: dict) -> dict:
    """Mean, sum and mean |value| of the values one record is drawn by (means are NaN for a record without
    tokens)."""
    signal = drawn_values(record)
    n = len(signal)
    total = math.fsum(signal)
    return {
        "tokens": n,
        "mean": total / n if n else math.nan,
        "sum": total,
        "mean_abs": math.fsum(abs(s) for s in signal) / n if n else math.nan,
    }


def summarize_conditions(pairs: list[dict[str, dict]]) -> list[dict]:
    """One row per condition: each case's mean |signal| averaged over cases, so every case weighs the same."""
    rows = []
    for condition in CONDITIONS:
        stats = [record_stats(pair[condition]) for pair in pairs]
        rows.append(
            {
                "condition": condition,
                "cases": len(stats),
                "tokens": sum(s["tokens"] for s in stats),
                "mean_abs_signal": math.fsum(s["mean_abs"] for s in stats) / len(stats),
                "mean_signal": math.fsum(s["mean"] for s in stats) / len(stats),
                "mean_sum_signal": math.fsum(s["sum"] for s in stats) / len(stats),
            }
        )
    return rows


def summary_markdown(rows: list[dict]) -> str:
    lines = [
        "| condition | cases | tokens | mean abs signal | mean signal | mean sum signal |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['cases']} | {r['tokens']} | {r['mean_abs_signal']:.4f} | "
            f"{r['mean_signal']:+.4f} | {r['mean_sum_signal']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def summary_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Reading and checking the token log.
# ---------------------------------------------------------------------------------------------------------------


def check_record(record, where: str) -> dict:
    """Raise a ValueError naming `where` (file:line) unless `record` is a complete, consistent token-log record."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, kind in RECORD_FIELDS.items():
        if name not in record:
            raise ValueError(f"{where}: missing field {name!r} (a token-log record needs: {', '.join(RECORD_FIELDS)})")
        value = record[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{where}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    n = len(record["tokens"])
    if not all(isinstance(t, str) for t in record["tokens"]):
        raise ValueError(f"{where}: field 'tokens' must hold strings")
    for name in PER_TOKEN_FIELDS:
        values = record[name]
        if len(values) != n:
            raise ValueError(f"{where}: field {name!r} has {len(values)} values but 'tokens' has {n}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"{where}: field {name!r} must hold finite numbers")
    if "value" in record and not (isinstance(record["value"], list) and len(record["value"]) == n and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in record["value"])):
        raise ValueError(f"{where}: field 'value' must hold {n} finite numbers, one per token")
    ids = record.get("completion_ids", [None] * n)
    if not isinstance(ids, list) or len(ids) != n:
        raise ValueError(f"{where}: field 'completion_ids' must be a list of {n} ids, one per token")
    return record


def read_token_log(path: str) -> list[dict]:
    """All records of a token_logps.jsonl, each checked; the first bad line stops with its file and line number."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such token log: {path}")
    records = [check_record(record, where) for where, record in iter_jsonl(path, skip_blank=False)]
    if not records:
        raise ValueError(f"{path}: the token log has no records")
    return records


def parse_steps(text: str) -> Union[str, list[int]]:
    """`last`, `all`, or comma-separated step numbers (`3,7` -> [3, 7])."""
    if text in ("last", "all"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--steps must be last, all, or comma-separated step numbers such as 10,20; got {text!r}") from None


def parse_indices(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--records must be comma-separated record numbers such as 0,2; got {text!r}") from None
    if any(i < 0 for i in indices):
        raise ValueError(f"--records must be >= 0, got {text!r}")
    return indices


def select_records(records: list[dict], steps: Union[str, list[int]], indices: Optional[list[int]]) -> list[dict]:
    """The records of `steps` (see parse_steps), then those at `indices` among them (None = all), in file order."""
    available = sorted({r["step"] for r in records})
    if steps == "last":
        steps = available[-1:]
    if steps != "all":
        missing = [s for s in steps if s not in available]
        if missing:
            raise ValueError(f"step(s) {missing} not in the token log; it has steps {available}")
        records = [r for r in records if r["step"] in steps]
    if indices is not None:
        bad = [i for i in indices if i >= len(records)]
        if bad:
            raise ValueError(f"--records {bad} out of range: the chosen steps have {len(records)} records (0-based)")
        records = [records[i] for i in indices]
    return records


def read_cases(path: str) -> list[dict]:
    """The cases file: a JSON list of objects with CASE_FIELDS (non-empty strings) and an optional `name`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such cases file: {path}")
    text = Path(path).read_text(encoding="utf-8")
    try:
        cases = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{path}: expected a non-empty JSON list of cases, each with {', '.join(CASE_FIELDS)}")
    for line, case in zip(_element_lines(text), cases):
        where = f"{path}:{line}"
        if not isinstance(case, dict):
            raise ValueError(f"{where}: a case must be a JSON object, got {type(case).__name__}")
        unknown = sorted(set(case) - set(CASE_FIELDS) - {"name"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields: name, {', '.join(CASE_FIELDS)}")
        for name in CASE_FIELDS:
            if not isinstance(case.get(name), str) or not case[name].strip():
                raise ValueError(f"{where}: field {name!r} must be a non-empty string")
    return cases


def _element_lines(text: str) -> list[int]:
    """The line on which each element of a (valid) top-level JSON list starts, for error messages."""
    decoder = json.JSONDecoder()
    lines, pos = [], text.index("[") + 1
    while True:
        while text[pos] in " \t\r\n,":
            pos += 1
        if text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)


# ---------------------------------------------------------------------------------------------------------------
# HTML: a pure function of the records.
# ---------------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.row { display: flex; gap: 1.2em; align-items: flex-start; margin-bottom: 1.5em; }
.panel { flex: 1 1 0; min-width: 0; border: 1px solid #ccc; border-radius: 6px; padding: 0.8em; }
.panel h3 { margin: 0 0 0.3em 0; font-size: 1em; }
.stats { font-family: monospace; color: #555; margin-bottom: 0.6em; }
.name { font-weight: bold; font-size: 0.85em; color: #555; display: block; margin-top: 0.5em; }
pre.text { white-space: pre-wrap; word-break: break-word; margin: 0.2em 0; max-height: 12em; overflow: auto;
           background: #f6f6f6; padding: 0.4em; font-size: 0.9em; }
.tokens { font-family: monospace; white-space: pre-wrap; word-break: break-word; line-height: 1.7; margin-top: 0.2em; }
.tok { border-radius: 2px; }
.tok.nl::before { content: "\\21B5"; opacity: 0.5; }
.legend { display: flex; align-items: center; gap: 0.4em; font-family: monospace; font-size: 0.85em; margin: 0.6em 0 1.2em 0; }
.legend .bar { display: flex; border: 1px solid #999; }
.legend .bar span { width: 1.6em; height: 1em; display: inline-block; }
"""


def _title(record: dict, position: int) -> str:
    text = (
        f"token {position}: {record['tokens'][position]!r}\n"
        f"student log-prob {record['logp_student'][position]:.4f}\n"
        f"teacher log-prob {record['logp_teacher'][position]:.4f}\n"
        f"signal {record['signal'][position]:+.4f}"
    )
    if record.get("distillation_mode") in LOGIT_MODES:
        text += f"\n{record['value_label']}: {record['value'][position]:.4g}"
    return text


def value_name(record: dict) -> str:
    return "divergence" if record.get("distillation_mode") in LOGIT_MODES else "signal"


def token_spans(record: dict, scale: Union[float, ColourScale]) -> str:
    """The completion as one <span class="tok"> per token, coloured by its value, with the numbers in its title."""
    scale = as_scale(scale)
    spans = []
    values = drawn_values(record)
    for i, token in enumerate(record["tokens"]):
        rgb = scale.colour(values[i])
        classes = "tok nl" if "\n" in token else "tok"
        spans.append(
            f'<span class="{classes}" style="background:{hex_colour(rgb)};color:{text_colour(rgb)}" '
            f'title="{html.escape(_title(record, i))}">{html.escape(token)}</span>'
        )
    return "".join(spans)


def format_stats(stats: dict, name: str = "signal") -> str:
    if not stats["tokens"]:
        return "0 tokens (masked)"
    return (
        f"mean {stats['mean']:+.4f} · sum {stats['sum']:+.4f} · mean |{name}| {stats['mean_abs']:.4f} · "
        f"{stats['tokens']} tokens"
    )


NO_FEEDBACK = "(empty: no usable feedback, so training masked this sample's advantage to 0)"


def feedback_text(record: dict) -> str:
    return record["feedback"] if record["feedback"].strip() else NO_FEEDBACK


def _panel_html(label: str, record: dict, scale: ColourScale) -> str:
    name = value_name(record)
    return (
        '<section class="panel">'
        f"<h3>{html.escape(label)}</h3>"
        f'<div class="stats">{html.escape(format_stats(record_stats(record), name))}</div>'
        f'<span class="name">Prompt</span><pre class="text">{html.escape(record["prompt"])}</pre>'
        f'<span class="name">Feedback (the user\'s next message)</span>'
        f'<pre class="text">{html.escape(feedback_text(record))}</pre>'
        f'<span class="name">Completion, coloured by {name}</span><div class="tokens">{token_spans(record, scale)}</div>'
        "</section>"
    )


def legend_html(scale: Union[float, ColourScale], steps: int = 11) -> str:
    scale = as_scale(scale)
    values = [scale.low + (scale.vmax - scale.low) * k / (steps - 1) for k in range(steps)]
    swatches = "".join(
        f'<span style="background:{hex_colour(scale.colour(v))}" title="{v:+.3f}"></span>' for v in values
    )
    explained = ("orange: the follow-up made the token less likely · blue: more likely (signal = teacher − student "
                 "log-prob)") if not scale.one_sided else f"per token: {scale.label}"
    return (
        f'<div class="legend"><span>{scale.low:+.3f}</span><span class="bar">{swatches}</span>'
        f"<span>{scale.vmax:+.3f}</span><span>&nbsp;{html.escape(explained)}</span></div>"
    )


def render_html(rows: list[tuple[str, list[tuple[str, dict]]]], scale: Union[float, ColourScale], title: str,
                note: str = "") -> str:
    """A self-contained page: one row per (heading, panels), each panel a (label, record) shown side by side.

    Every piece of text from the records goes through html.escape; the page loads nothing from anywhere.
    """
    scale = as_scale(scale)
    body = []
    for heading, panels in rows:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append('<div class="row">' + "".join(_panel_html(label, r, scale) for label, r in panels) + "</div>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + (f"<p>{html.escape(note)}</p>" if note else "")
        + legend_html(scale)
        + "\n".join(body)
        + "</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------------------------
# PNG: the same rows drawn with matplotlib on a grid of monospace character cells.
# ---------------------------------------------------------------------------------------------------------------

FONT = "DejaVu Sans Mono"  # ships with matplotlib, so the cell width below holds everywhere
FONT_SIZE = 9.0
CELL_W = 0.602 * FONT_SIZE  # DejaVu Sans Mono advances 0.602 em per character (points)
CELL_H = 1.6 * FONT_SIZE
MAX_PIXELS = 30000  # keep a very long selection under matplotlib's image-size limit by lowering the dpi


def display_text(token: str) -> str:
    """What a token shows as in the PNG: newlines as a return arrow, tabs as spaces, other controls dropped."""
    out = token.replace("\n", "\u21b5").replace("\t", "    ")
    return "".join(ch for ch in out if ch.isprintable())


def wrap_tokens(tokens: list[str], width: int) -> list[tuple[int, int, str]]:
    """(line, column, text) of each token on a `width`-column grid; a token holding a newline ends its line."""
    placed, line, col = [], 0, 0
    for token in tokens:
        text = display_text(token)[:width]
        if col + len(text) > width and col > 0:
            line, col = line + 1, 0
        placed.append((line, col, text))
        col += len(text)
        if "\n" in token:
            line, col = line + 1, 0
    return placed


def _wrap_plain(text: str, width: int, max_lines: int) -> list[str]:
    lines = []
    for paragraph in map(display_text, text.split("\n")):
        lines.extend(textwrap.wrap(paragraph, width) or [""])
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1][: width - 1] + "\u2026"]
    return lines


def _panel_lines(label: str, record: dict, width: int) -> tuple[list[tuple[str, str]], list[tuple[int, int, str]]]:
    """Plain text lines (text, weight) of a panel's header, and its placed tokens starting after them."""
    head = [(label, "bold")] if label else []
    head += [(format_stats(record_stats(record), value_name(record)), "normal"), ("Prompt:", "bold")]
    head += [(line, "normal") for line in _wrap_plain(record["prompt"], width, 6)]
    head.append(("Feedback:", "bold"))
    head += [(line, "normal") for line in _wrap_plain(feedback_text(record), width, 4)]
    head.append(("Completion:", "bold"))
    return head, wrap_tokens(record["tokens"], width)


def render_png(rows: list[tuple[str, list[tuple[str, dict]]]], scale: Union[float, ColourScale], title: str,
               width: int = 80) -> bytes:
    """The rows as a PNG: panels side by side, tokens on coloured cells, a colour bar at the bottom."""
    scale = as_scale(scale)
    columns = max(len(panels) for _, panels in rows)
    gap = 3
    layout, y = [], 2  # (top line, heading, [(head lines, placed tokens, record)]); lines 0-1 hold the title
    for heading, panels in rows:
        if heading:
            layout.append((y, heading, None))
            y += 1
        drawn = [(*_panel_lines(label, r, width), r) for label, r in panels]
        layout.append((y, None, drawn))
        y += max(len(head) + (placed[-1][0] + 1 if placed else 0) for head, placed, _ in drawn) + 1
    total_w, total_h = columns * width + (columns - 1) * gap + 2, y + 5  # room for the colour bar

    fig_w, fig_h = total_w * CELL_W / 72, total_h * CELL_H / 72
    fig = plt.figure(figsize=(fig_w, fig_h))
    try:
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, total_w)
        ax.set_ylim(total_h, 0)
        ax.axis("off")
        text_kw = dict(fontfamily=FONT, fontsize=FONT_SIZE, va="center", ha="left", parse_math=False)
        ax.text(1, 1, title, fontweight="bold", **text_kw)
        for top, heading, drawn in layout:
            if heading is not None:
                ax.text(1, top + 0.5, heading, fontweight="bold", **text_kw)
                continue
            for c, (head, placed, record) in enumerate(drawn):
                x0 = 1 + c * (width + gap)
                for i, (line, weight) in enumerate(head):
                    ax.text(x0, top + i + 0.5, line, fontweight=weight, **text_kw)
                y0 = top + len(head)
                for (line, col, text), s in zip(placed, drawn_values(record)):
                    rgb = scale.colour(s)
                    ax.add_patch(Rectangle((x0 + col, y0 + line + 0.08), max(len(text), 1), 0.84,
                                           facecolor=hex_colour(rgb), edgecolor="none"))
                    ax.text(x0 + col, y0 + line + 0.5, text, color=text_colour(rgb), **text_kw)
        colours = [tuple(ch / 255 for ch in scale.colour(v)) for v in _linspace(scale.low, scale.vmax, 256)]
        bar_ax = fig.add_axes((0.2, 2.6 * CELL_H / 72 / fig_h, 0.6, 0.9 * CELL_H / 72 / fig_h))
        bar = fig.colorbar(
            matplotlib.cm.ScalarMappable(norm=Normalize(scale.low, scale.vmax), cmap=ListedColormap(colours)),
            cax=bar_ax, orientation="horizontal",
        )
        bar.set_label(scale.label, fontsize=FONT_SIZE)
        bar.ax.tick_params(labelsize=FONT_SIZE - 1)
        dpi = min(150.0, MAX_PIXELS / max(fig_w, fig_h))
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=dpi, facecolor="white")
        return out.getvalue()
    finally:
        plt.close(fig)


def _linspace(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * k / (n - 1) for k in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


# The output flag's old names: accepted, with a warning; every command names it --output_dir.
DEPRECATED_OUTPUT_FLAGS = ["--out_dir", "--out-dir"]


def warn_deprecated(argv: list[str]) -> None:
    used = sorted({a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in DEPRECATED_OUTPUT_FLAGS})
    for flag in used:
        logger.warning("%s is deprecated: use --output_dir, as every command of this project does", flag)


@dataclass
class LogArguments:
    """Heatmaps of the records a training run wrote to <output_dir>/token_logps.jsonl."""

    token_log: Optional[str] = field(default=None, metadata={"help": "Path of a run's token_logps.jsonl."})
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where to write signal.html and signal.png (default: <token_log dir>/signal). --out_dir, "
                          "its old name, still works.", "aliases": DEPRECATED_OUTPUT_FLAGS},
    )
    steps: str = field(
        default="last", metadata={"help": "Which steps: `last`, `all`, or comma-separated step numbers (10,20)."}
    )
    records: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated 0-based indices among the chosen steps' records (default all)."}
    )
    vmax: Optional[float] = field(
        default=None, metadata={"help": "Limit of the symmetric colour scale (default: max |signal| shown)."}
    )
    png_width: int = field(default=80, metadata={"help": "Characters per line of a panel in the PNG."})

    def __post_init__(self):
        if self.token_log is None:
            raise ValueError("--token_log is required (a run writes it to <output_dir>/token_logps.jsonl)")
        self.step_list = parse_steps(self.steps)
        self.index_list = parse_indices(self.records)
        if self.vmax is not None and not self.vmax > 0:
            raise ValueError(f"--vmax must be > 0, got {self.vmax}")
        if self.png_width < 20:
            raise ValueError(f"--png_width must be >= 20, got {self.png_width}")
        if self.output_dir is None:
            self.output_dir = str(Path(self.token_log).parent / "signal")


@dataclass
class CasesArguments:
    """Score a relevant and an unrelated follow-up to the same answers with the trainer's own code."""

    cases: Optional[str] = field(
        default=None,
        metadata={"help": f"JSON list of cases, each with {', '.join(CASE_FIELDS)} (and optionally name)."},
    )
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Model to score with (hub id or folder)."})
    system_prompt: str = field(
        default="general",
        metadata={"help": "System prompt of the policy, a key of prompts.SYSTEM_PROMPTS: tldr or general (none)."},
    )
    output_dir: str = field(
        default="runs/signal_cases",
        metadata={"help": "Where to write the pages, tables and records. --out_dir, its old name, still works.",
                  "aliases": DEPRECATED_OUTPUT_FLAGS},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Logits are divided by this before log-probs, as in training: use the run's."}
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "Weights dtype. float32 gives the cleanest log-probs and is fastest on CPU; auto loads the "
                  "checkpoint's own dtype, as the trainer does (bfloat16 for most large models).",
                  "choices": list(DTYPES)},
    )
    vmax: Optional[float] = field(
        default=None, metadata={"help": "Limit of the symmetric colour scale (default: max |signal| over all cases)."}
    )
    png_width: int = field(default=60, metadata={"help": "Characters per line of a panel in the PNG."})

    def __post_init__(self):
        from sdpo_interactions.prompts import SYSTEM_PROMPTS

        if self.cases is None or self.model_name_or_path is None:
            raise ValueError("--cases and --model_name_or_path are required")
        if self.system_prompt not in SYSTEM_PROMPTS:
            raise ValueError(f"Unknown --system_prompt {self.system_prompt!r}; choose one of {', '.join(SYSTEM_PROMPTS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown --dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.vmax is not None and not self.vmax > 0:
            raise ValueError(f"--vmax must be > 0, got {self.vmax}")
        if self.png_width < 20:
            raise ValueError(f"--png_width must be >= 20, got {self.png_width}")
        self.case_list = read_cases(self.cases)


def run_log(args: LogArguments) -> list[Path]:
    records = select_records(read_token_log(args.token_log), args.step_list, args.index_list)
    scale = colour_scale(records, args.vmax)
    rows = [(f"Step {r['step']}, record {i}", [("", r)]) for i, r in enumerate(records)]
    steps = sorted({r["step"] for r in records})
    title = f"SDPO signal: {args.token_log}, step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}"
    out = Path(args.output_dir)
    paths = [out / "signal.html", out / "signal.png"]
    write_atomic(paths[0], render_html(rows, scale, title).encode("utf-8"))
    write_atomic(paths[1], render_png(rows, scale, title, width=args.png_width))
    return paths


def score_cases(args: CasesArguments) -> list[dict[str, dict]]:
    """For each case, {"relevant": record, "unrelated": record}, scored by OnlineSDPOTrainer.score_signal."""
    from transformers import AutoTokenizer

    from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
    from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    prompts, completions, feedbacks = [], [], []
    for case in args.case_list:
        for condition in CONDITIONS:
            prompts.append(prompt_messages(case["prompt"], SYSTEM_PROMPTS[args.system_prompt]))
            completions.append(case["response"])
            feedbacks.append(case[f"{condition}_followup"])
    with tempfile.TemporaryDirectory() as tmp:
        # bf16 only switches on training autocast, which scoring never uses; CPU machines would reject it.
        config = OnlineSDPOConfig(
            output_dir=tmp, report_to=[], bf16=False, temperature=args.temperature,
            model_init_kwargs={"dtype": args.dtype},
        )
        trainer = OnlineSDPOTrainer(model=args.model_name_or_path, user_simulator=None, args=config,
                                    processing_class=tokenizer)
        records = trainer.score_signal(prompts, completions, feedbacks)
    return [dict(zip(CONDITIONS, records[i : i + len(CONDITIONS)])) for i in range(0, len(records), len(CONDITIONS))]


def run_cases(args: CasesArguments) -> tuple[list[dict], list[Path]]:
    pairs = score_cases(args)
    vmax = scale_limit([r for pair in pairs for r in pair.values()], args.vmax)
    rows = [
        (f"Case {i}: {case.get('name', '')}".rstrip(": "),
         [(f"{condition} follow-up", pair[condition]) for condition in CONDITIONS])
        for i, (case, pair) in enumerate(zip(args.case_list, pairs))
    ]
    title = f"SDPO signal: relevant vs unrelated follow-ups ({args.model_name_or_path})"
    summary = summarize_conditions(pairs)
    note = "Mean |signal| per condition: " + ", ".join(f"{r['condition']} {r['mean_abs_signal']:.4f}" for r in summary)
    out = Path(args.output_dir)
    paths = [out / "cases.html", out / "cases.png", out / "summary.md", out / "summary.csv", out / "cases_records.jsonl"]
    lines = [json.dumps({"condition": c, "case": i, **pair[c]}, ensure_ascii=False) for i, pair in enumerate(pairs)
             for c in CONDITIONS]
    write_atomic(paths[0], render_html(rows, vmax, title, note).encode("utf-8"))
    write_atomic(paths[1], render_png(rows, vmax, title, width=args.png_width))
    write_atomic(paths[2], summary_markdown(summary).encode("utf-8"))
    write_atomic(paths[3], summary_csv(summary).encode("utf-8"))
    write_atomic(paths[4], ("\n".join(lines) + "\n").encode("utf-8"))
    return summary, paths


MODES = {"log": LogArguments, "cases": CasesArguments}


def main(argv: Optional[list[str]] = None) -> None:
    from trl import TrlParser

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in MODES:
        raise SystemExit(f"usage: visualize_signal.py {{{','.join(MODES)}}} [flags]  (add --help after the mode)")
    mode, rest = argv[0], argv[1:]
    warn_deprecated(rest)
    parser = TrlParser((MODES[mode],), prog=f"visualize_signal.py {mode}", formatter_class=HelpFormatter)
    (args,) = parser.parse_args_and_config(args=rest)
    if mode == "log":
        paths = run_log(args)
    else:
        summary, paths = run_cases(args)
        print(summary_markdown(summary))
    for path in paths:
        print(path)


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()
