"""visualize_signal.py: HTML/PNG heatmaps of the token log, and the relevant-vs-unrelated cases mode."""

import csv
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

import sdpo_interactions.cli.visualize_signal as vs

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NASTY = "<script>alert(\"x\")</script> ' \" onmouseover=\"alert(1)\" &amp;"


def make_record(step=1, tokens=("Hi", " there", "."), signal=(0.5, -1.0, 0.25), **fields):
    """A record in the documented token_logps.jsonl format; signal = teacher - student."""
    tokens, signal = list(tokens), list(signal)
    student = [-1.0 - 0.1 * i for i in range(len(tokens))]
    record = {
        "step": step,
        "prompt": "Say hi.",
        "completion": "".join(tokens),
        "feedback": "thanks!",
        "student_context": "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n",
        "teacher_context": "<|im_start|>user\nSay hi.\n\nthanks!<|im_end|>\n<|im_start|>assistant\n",
        "completion_ids": list(range(100, 100 + len(tokens))),
        "tokens": tokens,
        "logp_student": student,
        "logp_teacher": [s + d for s, d in zip(student, signal)],
        "signal": signal,
    }
    record.update(fields)
    return record


def write_log(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


class PageParser(HTMLParser):
    """Collects each token span (its attributes and text) and the text of every <pre>."""

    def __init__(self):
        super().__init__()
        self.spans, self.pres, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "tok" in attrs.get("class", "").split():
            self.spans.append({"attrs": attrs, "text": ""})
            self._in = "span"
        elif tag == "pre":
            self.pres.append("")
            self._in = "pre"

    def handle_endtag(self, tag):
        if tag in ("span", "pre"):
            self._in = None

    def handle_data(self, data):
        if self._in == "span":
            self.spans[-1]["text"] += data
        elif self._in == "pre":
            self.pres[-1] += data


def parse_page(text):
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def one_panel(record, vmax=None):
    return vs.render_html([("", [("", record)])], vs.scale_limit([record], vmax), "t")


# -- colour scale -------------------------------------------------------------------------------------------------


def swap_red_blue(rgb):
    return (rgb[2], rgb[1], rgb[0])


@pytest.mark.parametrize("vmax", [0.3, 1.0, 7.5])
def test_colour_scale_is_symmetric_around_zero(vmax):
    assert vs.signal_colour(0.0, vmax) == vs.NEUTRAL
    for fraction in (0.01, 0.2, 0.5, 0.77, 1.0, 3.0):
        v = fraction * vmax
        assert vs.signal_colour(v, vmax) == swap_red_blue(vs.signal_colour(-v, vmax))
        assert vs.signal_colour(v, vmax) != vs.signal_colour(-v, vmax)
    assert vs.signal_colour(vmax, vmax) == vs.POSITIVE
    assert vs.signal_colour(-vmax, vmax) == vs.NEGATIVE
    assert vs.signal_colour(10 * vmax, vmax) == vs.POSITIVE  # clipped beyond the limit


def test_colour_scale_by_hand():
    # halfway from white (255) to POSITIVE (33, 102, 172): 144, 178.5 -> 178, 213.5 -> 214
    assert vs.signal_colour(0.5, 1.0) == (144, 178, 214)
    assert vs.signal_colour(-0.5, 1.0) == (214, 178, 144)
    assert vs.hex_colour((144, 178, 214)) == "#90b2d6"


def test_colour_scale_rejects_a_non_positive_limit():
    with pytest.raises(ValueError, match="vmax"):
        vs.signal_colour(0.1, 0.0)


def test_scale_limit_is_max_abs_signal_over_what_is_shown_or_the_flag():
    records = [make_record(signal=(0.5, -1.0, 0.25)), make_record(signal=(2.0, -3.5, 0.0))]
    assert vs.scale_limit(records) == 3.5
    assert vs.scale_limit(records[:1]) == 1.0
    assert vs.scale_limit(records, vmax=0.2) == 0.2
    assert vs.scale_limit([make_record(signal=(0.0, 0.0, 0.0))]) == 1.0


def test_record_stats_and_condition_summary_by_hand():
    a = make_record(signal=(0.5, -1.0, 0.25))
    assert vs.record_stats(a) == {"tokens": 3, "mean": -0.25 / 3, "sum": -0.25, "mean_abs": 1.75 / 3}
    b = make_record(tokens=("x",), signal=(-2.0,))
    pairs = [{"relevant": a, "unrelated": b}, {"relevant": b, "unrelated": b}]
    relevant, unrelated = vs.summarize_conditions(pairs)
    assert relevant["condition"] == "relevant" and relevant["cases"] == 2 and relevant["tokens"] == 4
    assert relevant["mean_abs_signal"] == pytest.approx((1.75 / 3 + 2.0) / 2)
    assert relevant["mean_sum_signal"] == pytest.approx((-0.25 - 2.0) / 2)
    assert unrelated["mean_abs_signal"] == pytest.approx(2.0)


# -- HTML -----------------------------------------------------------------------------------------------------------


def test_every_token_appears_once_in_order():
    tokens = ["The", " cat", " cat", "\n", "  ", "<", "/", "b", ">", " &", "\u00e9t\u00e9", "\n\n", "<|im_end|>"]
    signal = [0.1 * (i - 6) for i in range(len(tokens))]
    page = parse_page(one_panel(make_record(tokens=tokens, signal=signal)))
    assert [s["text"] for s in page.spans] == tokens


def test_token_colours_and_tooltips_come_from_the_record():
    record = make_record(signal=(0.5, -1.0, 0.25))
    spans = parse_page(one_panel(record)).spans
    # vmax = max |signal| = 1.0, so the second token sits at the negative end of the scale
    assert f"background:{vs.hex_colour(vs.NEGATIVE)}" in spans[1]["attrs"]["style"]
    assert f"background:{vs.hex_colour(vs.signal_colour(0.5, 1.0))}" in spans[0]["attrs"]["style"]
    title = spans[1]["attrs"]["title"]
    assert "student log-prob -1.1000" in title
    assert "teacher log-prob -2.1000" in title
    assert "signal -1.0000" in title


def test_html_shows_the_per_record_mean_and_sum():
    text = one_panel(make_record(signal=(0.5, -1.0, 0.25)))
    assert "mean -0.0833" in text and "sum -0.2500" in text


def test_escaping_holds_in_prompt_feedback_completion_and_tokens():
    tokens = ["<script>", "alert(\"x\")", "</script>", " ' \" onmouseover=\"alert(1)\"", " &amp;"]
    record = make_record(tokens=tokens, signal=(1.0, -1.0, 0.5, 0.0, 0.2), prompt=NASTY, feedback=NASTY,
                         completion="".join(tokens))
    text = one_panel(record)
    assert "<script" not in text.lower()
    assert 'onmouseover="' not in text
    page = parse_page(text)
    assert [s["text"] for s in page.spans] == tokens
    assert all(set(s["attrs"]) == {"class", "style", "title"} for s in page.spans)
    assert page.pres == [NASTY, NASTY]
    assert f"token 3: {tokens[3]!r}" in page.spans[3]["attrs"]["title"]


def test_empty_feedback_and_a_fully_masked_completion_are_shown_as_such():
    record = make_record(tokens=(), signal=(), feedback="  ")
    text = one_panel(record)
    assert parse_page(text).pres == ["Say hi.", vs.NO_FEEDBACK] and "0 tokens (masked)" in text
    assert vs.render_png([("", [("", record)])], 1.0, "t").startswith(PNG_SIGNATURE)


def test_html_is_self_contained():
    text = vs.render_html([("Step 1, record 0", [("", make_record())])], 1.0, "title")
    for needle in ("http", "<link", "<script", "src=", "@import", "url("):
        assert needle not in text


def test_cases_rows_render_side_by_side():
    rows = [("Case 0", [("relevant follow-up", make_record(feedback="yes")),
                        ("unrelated follow-up", make_record(feedback="banana bread?"))])]
    text = vs.render_html(rows, 1.0, "cases")
    assert text.count('<div class="row">') == 1 and text.count('<section class="panel">') == 2
    assert parse_page(text).pres == ["Say hi.", "yes", "Say hi.", "banana bread?"]


# -- PNG ------------------------------------------------------------------------------------------------------------


def test_wrap_tokens_by_hand():
    placed = vs.wrap_tokens(["ab", "cde", "\n", "fghij", "k", "\tx"], width=6)
    assert placed == [(0, 0, "ab"), (0, 2, "cde"), (0, 5, "\u21b5"), (1, 0, "fghij"), (1, 5, "k"), (2, 0, "    x")]


def test_png_is_valid_and_shows_the_colours(tmp_path):
    record = make_record(tokens=["Strong", " plus", " minus", " zero"] * 5, signal=[2.0, 1.0, -2.0, 0.0] * 5)
    data = vs.render_png([("Step 1, record 0", [("", record)])], 2.0, "title <&>")
    assert data.startswith(PNG_SIGNATURE)
    path = tmp_path / "s.png"
    path.write_bytes(data)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 300 and image.shape[2] in (3, 4)
    pixels = image[..., :3].reshape(-1, 3)

    def has_colour(rgb):
        return bool((abs(pixels - [c / 255 for c in rgb]) < 0.02).all(axis=1).any())

    assert has_colour(vs.POSITIVE) and has_colour(vs.NEGATIVE) and has_colour(vs.signal_colour(1.0, 2.0))


# -- reading the token log ------------------------------------------------------------------------------------------


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_log(tmp_path / "token_logps.jsonl", [make_record(), '{"step": 1, "prompt": "cut', make_record()])
    with pytest.raises(ValueError, match=rf"{path}:2: malformed JSON"):
        vs.read_token_log(str(path))


def test_missing_field_names_file_line_and_field(tmp_path):
    broken = make_record()
    del broken["signal"]
    path = write_log(tmp_path / "token_logps.jsonl", [make_record(), make_record(), broken])
    with pytest.raises(ValueError, match=rf"{path}:3: missing field 'signal'"):
        vs.read_token_log(str(path))


@pytest.mark.parametrize(
    "bad, message",
    [
        (make_record(signal=(0.1, 0.2), logp_teacher=[-1.0, -1.0, -1.0]), "'signal' has 2 values but 'tokens' has 3"),
        (make_record(logp_teacher=[0.0]), "'logp_teacher' has 1 values"),
        (make_record(step="3"), "'step' must be int"),
        (make_record(signal=(0.1, float("nan"), 0.2), logp_teacher=[-1.0] * 3), "'signal' must hold finite numbers"),
        ("", "empty line"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_inconsistent_lines_are_clear_errors(tmp_path, bad, message):
    path = write_log(tmp_path / "token_logps.jsonl", [make_record(), bad])
    with pytest.raises(ValueError, match=rf"{path}:2: .*{message}"):
        vs.read_token_log(str(path))


def test_missing_token_log_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such token log: .*nope.jsonl"):
        vs.read_token_log(str(tmp_path / "nope.jsonl"))


def test_record_selection():
    records = [make_record(step=s, prompt=f"p{s}{k}") for s in (2, 4, 4, 9, 9) for k in range(1)]
    records = [dict(r, prompt=f"r{i}") for i, r in enumerate(records)]
    assert [r["prompt"] for r in vs.select_records(records, vs.parse_steps("last"), None)] == ["r3", "r4"]
    assert [r["prompt"] for r in vs.select_records(records, vs.parse_steps("2,4"), vs.parse_indices("2"))] == ["r2"]
    assert len(vs.select_records(records, vs.parse_steps("all"), None)) == 5
    with pytest.raises(ValueError, match=r"it has steps \[2, 4, 9\]"):
        vs.select_records(records, [5], None)
    with pytest.raises(ValueError, match="out of range"):
        vs.select_records(records, [], [2])
    with pytest.raises(ValueError, match="last, all, or comma-separated"):
        vs.parse_steps("latest")


def test_log_mode_cli_writes_the_last_step(tmp_path, capsys):
    records = [make_record(step=1, prompt="first step"), make_record(step=3, prompt="last step A"),
               make_record(step=3, prompt="last step B", tokens=("x", "y"), signal=(0.1, -0.2))]
    log = write_log(tmp_path / "token_logps.jsonl", records)
    vs.main(["log", "--token_log", str(log), "--output_dir", str(tmp_path / "signal")])
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "signal" / "signal.html"), str(tmp_path / "signal" / "signal.png")]
    page = parse_page(Path(printed[0]).read_text())
    assert page.pres == ["last step A", "thanks!", "last step B", "thanks!"]
    assert [s["text"] for s in page.spans] == ["Hi", " there", ".", "x", "y"]
    assert Path(printed[1]).read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("flag", ["--out_dir", "--out-dir", "--out_dir="])
def test_out_dir_still_works_with_a_deprecation_warning(flag, tmp_path, capsys, caplog):
    log = write_log(tmp_path / "token_logps.jsonl", [make_record(step=1, prompt="p")])
    out = str(tmp_path / "old name")
    pair = [flag + out] if flag.endswith("=") else [flag, out]
    vs.main(["log", "--token_log", str(log), *pair])
    assert capsys.readouterr().out.split("\n")[0] == str(Path(out) / "signal.html")
    assert f"{flag.rstrip('=')} is deprecated: use --output_dir" in caplog.text
    caplog.clear()
    vs.main(["log", "--token_log", str(log), "--output_dir", out])
    assert "deprecated" not in caplog.text


@pytest.mark.parametrize("mode", list(vs.MODES))
def test_help_states_each_default_once(mode, capsys):
    with pytest.raises(SystemExit):
        vs.main([mode, "--help"])
    options = capsys.readouterr().out.split("\n  -")[1:]  # one entry per option
    assert [o.split()[0] for o in options if o.count("(default") > 1 or "(default: None)" in o] == []
    assert any(o.startswith("-output_dir") for o in options)
    assert any("(default: 60)" in " ".join(o.split()) or "(default: 80)" in " ".join(o.split()) for o in options)


# -- cases ----------------------------------------------------------------------------------------------------------


def test_shipped_cases_file_is_valid():
    cases = vs.read_cases(str(REPO / "data" / "sample" / "signal_cases.json"))
    assert 4 <= len(cases) <= 6


def test_bad_cases_name_file_and_line(tmp_path):
    good = {"prompt": "p", "response": "r", "relevant_followup": "a", "unrelated_followup": "b"}
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([good, {k: v for k, v in good.items() if k != "response"}], indent=2))
    with pytest.raises(ValueError, match=rf"{path}:8: field 'response'"):
        vs.read_cases(str(path))
    path.write_text(json.dumps([dict(good, relevant="x")]))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['relevant'\]; valid fields"):
        vs.read_cases(str(path))
    path.write_text('[\n  {"prompt": "p",\n  }\n]')
    with pytest.raises(ValueError, match=rf"{path}:3: malformed JSON"):
        vs.read_cases(str(path))


@pytest.fixture(scope="module")
def scored_cases(tiny_model_dir, tmp_path_factory):
    """One case scored by the tiny random model (tests/conftest.py): the mode's plumbing, not the model's reading."""
    folder = tmp_path_factory.mktemp("cases")
    cases = [{
        "name": "wrong fact",
        "prompt": "Capital of Australia?",
        "response": "Sydney.",
        "relevant_followup": "Wrong, it is Canberra.",
        "unrelated_followup": "How many legs does a spider have?",
    }]
    (folder / "cases.json").write_text(json.dumps(cases))
    args = vs.CasesArguments(cases=str(folder / "cases.json"), model_name_or_path=tiny_model_dir,
                             system_prompt="general", output_dir=str(folder / "out"))
    summary, paths = vs.run_cases(args)
    return summary, paths


def test_cases_mode_reports_one_mean_abs_signal_per_condition(scored_cases):
    summary, paths = scored_cases
    assert [row["condition"] for row in summary] == ["relevant", "unrelated"]
    for row in summary:
        assert row["cases"] == 1 and row["tokens"] > 1
        assert math.isfinite(row["mean_abs_signal"]) and row["mean_abs_signal"] > 0
    table = Path(paths[3]).read_text()
    assert [r["condition"] for r in csv.DictReader(io.StringIO(table))] == ["relevant", "unrelated"]
    assert "| relevant | 1 |" in Path(paths[2]).read_text()


def test_cases_mode_scores_the_same_answer_under_two_follow_ups(scored_cases):
    _, paths = scored_cases
    records = vs.read_token_log(str(paths[4]))  # extra fields (condition, case) are fine
    relevant, unrelated = records
    assert (relevant["condition"], unrelated["condition"]) == ("relevant", "unrelated")
    assert relevant["tokens"] == unrelated["tokens"] and relevant["logp_student"] == unrelated["logp_student"]
    assert relevant["logp_teacher"] != unrelated["logp_teacher"]
    assert "Wrong, it is Canberra." in relevant["teacher_context"]
    assert "spider" in unrelated["teacher_context"] and "spider" not in unrelated["student_context"]
    page = parse_page(Path(paths[0]).read_text())
    assert [s["text"] for s in page.spans] == relevant["tokens"] + unrelated["tokens"]
    assert Path(paths[1]).read_bytes().startswith(PNG_SIGNATURE)
