"""Evaluating a run trained with a persona schedule: every checkpoint judged under every persona of the schedule (a
matrix), the in-context oracle of each persona (the baseline told the persona) judged against the plain baseline, the
table, CSV and plot carrying the matrix, the switch point and the oracles, and both judge protocols end to end.

The run is real (four steps of the tiny random model, tests/conftest.py, with the schedule's callback); the judge is
served by the loopback server through the real `openai` SDK and prefers short answers as the concise persona and
long ones as the detailed one, so every expected outcome follows from the responses' lengths.
"""

import csv
import json
import re
import shutil
from pathlib import Path

import matplotlib.image
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

import sdpo_interactions.cli.evaluate as evaluate
import sdpo_interactions.evaluation.plot as plot
from sdpo_interactions.cli.evaluate import EvalArguments
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.evaluation.oracle import oracle_system_prompt
from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages
from sdpo_interactions.testing.messages_server import MessagesServer
from sdpo_interactions.users.base import UserSimulator
from sdpo_interactions.users.style_schedule import BatchArithmetic, StyleSchedule

CONCISE, DETAILED = "concise_casual_beginner", "detailed_professional_expert"
SCHEDULE = f"{CONCISE}:2,{DETAILED}"  # one answer a step: the switch is after step 2
HELD_OUT = ["My cat knocks glasses off the table at night. How do I stop her?",
            "Is it rude to leave a party without saying goodbye?"]


class SwitchingUser(UserSimulator):
    """Replies in the voice of whichever persona it was switched to."""

    def __init__(self):
        self.style, self.persona = CONCISE, STYLE_PERSONAS[CONCISE]

    def generate_feedback(self, prompts, completions):
        return [f"As {self.style}: please adjust the length." for _ in prompts]


@pytest.fixture(scope="module")
def scheduled_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scheduled") / "run"
    args = OnlineSDPOConfig(
        output_dir=str(out), per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=4,
        save_steps=2, max_completion_length=6, learning_rate=1e-3, logging_steps=1, token_log_samples=0,
        report_to=[], bf16=False, gradient_checkpointing=False, seed=3, use_cpu=True,
    )
    requests = [f"Summarise: story number {i}, in which nothing happens." for i in range(4)]
    trainer = OnlineSDPOTrainer(
        model=tiny_model_dir, user_simulator=SwitchingUser(), args=args,
        train_dataset=Dataset.from_list([{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in requests]),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        run_settings={"system_prompt_name": "tldr", "system_prompt": SYSTEM_PROMPTS["tldr"]},
        style_schedule=StyleSchedule.build(SCHEDULE, BatchArithmetic.of(args)),
    )
    trainer.train()
    return out


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "held_out.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in HELD_OUT))
    return path


def responses_of(body):
    text = body["messages"][-1]["content"]
    return [re.search(rf"\[Response {x}\]\n(.*?)\n\[End of response {x}\]", text, re.S).group(1) for x in "AB"]


def preferred(body) -> str:
    """The concise persona prefers the shorter response, the detailed one the longer; equal lengths: a tie."""
    a, b = map(len, responses_of(body))
    concise = STYLE_PERSONAS[CONCISE] in body["messages"][0]["content"]
    if a == b:
        return "C"
    return "A" if (a < b) == concise else "B"


def preferred_logprobs(body):
    return [(preferred(body), -0.01), ("C" if preferred(body) != "C" else "A", -5.0)]


def expected_outcome(record) -> str:
    mine, theirs = len(record["policy_response"]), len(record["baseline_response"])
    if mine == theirs:
        return "tie"
    return "win" if (mine < theirs) == (record["style"] == CONCISE) else "loss"


@pytest.fixture(scope="module")
def judge_server():
    with pytest.MonkeyPatch.context() as patch, MessagesServer(reply=preferred, logprobs=preferred_logprobs) as server:
        patch.setenv("JUDGE_API_KEY", "sk-judge-test")
        yield server


@pytest.fixture(scope="module")
def recorded():
    """Which model wrote how many responses, per call of sharded_generate (the real one still writes them), and the
    plot's figures, kept for inspection after they are written."""
    calls, figures = [], []
    generate, write_png = evaluate.sharded_generate, plot.write_png

    def counting(model_path, jobs, **kwargs):
        calls.append((Path(model_path).name, len(jobs)))
        return generate(model_path, jobs, **kwargs)

    def keep(fig, path):
        figures.append(fig)
        write_png(fig, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "sharded_generate", counting)
        patch.setattr(plot, "write_png", keep)
        yield calls, figures


def matrix_args(run, held_out, baseline, server, out, **overrides):
    return EvalArguments(run_dir=str(run), data_path=str(held_out), eval_n=len(HELD_OUT), baseline=baseline,
                         judge="openai", judge_api_base=server.url + "/v1", judge_api_model="judge",
                         judge_api_max_retries=0, output_dir=str(out), **overrides)


@pytest.fixture(scope="module")
def matrix(scheduled_run, held_out, tiny_model_dir, judge_server, recorded, tmp_path_factory):
    """The scheduled run evaluated once, by default: every checkpoint under every persona, and the oracles."""
    out = tmp_path_factory.mktemp("matrix") / "eval"
    calls, figures = recorded
    rows = evaluate.evaluate(matrix_args(scheduled_run, held_out, tiny_model_dir, judge_server, out))
    return dict(out=out, rows=rows, generated=list(calls), figures=list(figures))


def test_a_scheduled_run_is_judged_under_every_persona_with_the_oracle(matrix, tiny_model_dir):
    out, rows, generated, figures = matrix["out"], matrix["rows"], matrix["generated"], matrix["figures"]
    cells = {(r["kind"], r["step"], r["style"]): r for r in rows}
    assert sorted(cells, key=str) == sorted([("checkpoint", step, style) for step in (2, 4) for style in
                                             (CONCISE, DETAILED)] + [("oracle", None, CONCISE),
                                                                     ("oracle", None, DETAILED)], key=str)
    assert cells["checkpoint", 2, CONCISE]["trained_on"] == CONCISE  # the last step before the switch
    assert cells["checkpoint", 4, DETAILED]["trained_on"] == DETAILED
    # Each checkpoint answered each prompt once, whoever judged it; the baseline wrote its answers and the oracles'.
    assert sorted(generated) == [("checkpoint-2", 2), ("checkpoint-4", 2), (Path(tiny_model_dir).name, 2 + 2 * 2)]

    records = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(records) == 6 * len(HELD_OUT)
    for record in records:
        assert record["outcome"] == expected_outcome(record) and record["judge_protocol"] == "letter"
        assert record["persona"] == STYLE_PERSONAS[record["style"]]
    oracles = [r for r in records if r["kind"] == "oracle"]
    for record in oracles:
        assert record["checkpoint"] == "oracle" and record["step"] is None
        assert record["oracle_system_prompt"] == oracle_system_prompt(SYSTEM_PROMPTS["tldr"], record["persona"])
        assert record["messages"][0] == {"role": "system", "content": SYSTEM_PROMPTS["tldr"]}  # judged as asked
    baseline = [json.loads(line) for line in Path(out / "baseline_responses.jsonl").read_text().splitlines()]
    told = {b["response"] for b in baseline if STYLE_PERSONAS[DETAILED] in b["prompt"][0]["content"]}
    assert {r["policy_response"] for r in oracles if r["style"] == DETAILED} == told  # the baseline, told
    for (kind, step, style), row in cells.items():
        mine = [r for r in records if (r["kind"], r["step"], r["style"]) == (kind, step, style)]
        assert (row["wins"], row["losses"], row["ties"]) == tuple(
            sum(r["outcome"] == o for r in mine) for o in ("win", "loss", "tie"))

    with open(out / "win_rates.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {t["kind"] for t in table} == {"checkpoint", "oracle"}
    assert {t["oracle_system_prompt"] for t in table if t["kind"] == "oracle"} == {
        oracle_system_prompt(SYSTEM_PROMPTS["tldr"], STYLE_PERSONAS[s]) for s in (CONCISE, DETAILED)}
    markdown = (out / "win_rates.md").read_text()
    assert f"| step | interactions | trained on | judged as {CONCISE} | judged as {DETAILED} |" in markdown
    assert re.search(rf"^\| 2 \| 2 \| {CONCISE} \| ", markdown, re.M)
    assert re.search(rf"^\| 4 \| 4 \| {DETAILED} \| ", markdown, re.M)
    assert re.search(r"^\| in-context oracle \| \| baseline \+ persona prompt \| ", markdown, re.M)
    assert f"Judged as `{DETAILED}`:" in markdown and "system prompt is in win_rates.csv" in markdown

    (fig,) = figures
    (ax,) = fig.axes
    vertical = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2
                and line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in vertical] == [2]  # the switch point
    assert any(f"-> {DETAILED}" in text.get_text() for text in ax.texts)
    labels = ax.get_legend_handles_labels()[1]
    assert CONCISE in labels and DETAILED in labels
    oracle_lines = {label for label in labels if label.startswith("in-context oracle")}
    expected = {f"in-context oracle ({r['style']})" for r in rows if r["kind"] == "oracle" and r["win_rate"] == r["win_rate"]}
    assert oracle_lines == expected
    assert matplotlib.image.imread(out / "win_rate.png").shape[0] > 100


def test_the_rerun_asks_nothing_and_style_and_oracle_flags_narrow_it(matrix, scheduled_run, held_out,
                                                                   tiny_model_dir, judge_server, recorded):
    calls, _ = recorded
    hits, generated = judge_server.hits(), len(calls)
    again = evaluate.evaluate(matrix_args(scheduled_run, held_out, tiny_model_dir, judge_server, matrix["out"]))
    assert again == matrix["rows"] and (judge_server.hits(), len(calls)) == (hits, generated)
    # One persona named, no oracle: the same judged pairs, fewer rows.
    rows = evaluate.evaluate(matrix_args(scheduled_run, held_out, tiny_model_dir, judge_server, matrix["out"],
                                         style=CONCISE, oracle=False))
    assert [(r["step"], r["style"], r["kind"]) for r in rows] == [(2, CONCISE, "checkpoint"), (4, CONCISE, "checkpoint")]
    assert (judge_server.hits(), len(calls)) == (hits, generated)


def test_the_logprob_protocol_end_to_end_keys_apart_from_the_letter(matrix, scheduled_run, held_out, tiny_model_dir,
                                                                   judge_server, tmp_path):
    out = tmp_path / "eval"
    shutil.copytree(matrix["out"], out)
    letter = evaluate.evaluate(matrix_args(scheduled_run, held_out, tiny_model_dir, judge_server, out, ckpts=[4]))
    rows = evaluate.evaluate(matrix_args(scheduled_run, held_out, tiny_model_dir, judge_server, out, ckpts=[4],
                                         judge_protocol="logprobs"))
    records = [r for r in map(json.loads, (out / "judgments.jsonl").read_text().splitlines())
               if r["kind"] == "oracle" or r["step"] == 4]
    by_protocol = {p: [r for r in records if r["judge_protocol"] == p] for p in ("letter", "logprobs")}
    assert len(by_protocol["letter"]) == len(by_protocol["logprobs"]) == 4 * len(HELD_OUT)  # not reused
    for record in by_protocol["logprobs"]:
        assert all(set(raw) == {"A", "B", "C"} for raw in record["raw_judgments"])
        assert record["outcome"] == expected_outcome(record)
    assert [(r["wins"], r["losses"], r["ties"]) for r in rows] == [(r["wins"], r["losses"], r["ties"]) for r in letter]
    assert "log-probabilities of the labels" in (out / "win_rates.md").read_text()
