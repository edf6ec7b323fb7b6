"""evaluate.py: verdict parsing, swap-and-tie resolution and win-rate arithmetic by hand; early errors; the Claude
judge through the real `anthropic` SDK against a loopback server; end-to-end runs with two checkpoints of a real
short training run of the tiny random model (tests/conftest.py), which also answers as the baseline and the local
judge (its verdicts are noise, which the records must then show as such); resume; and the launch scripts' dry runs.
"""

import csv
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import TrlParser

import sdpo_interactions.cli.evaluate as evaluate
import sdpo_interactions.evaluation.generation as generation
import sdpo_interactions.evaluation.judges as judges
import sdpo_interactions.evaluation.judging as judging
from sdpo_interactions.cli.evaluate import EvalArguments, read_jsonl_by_key
from sdpo_interactions.evaluation.held_out import load_held_out
from sdpo_interactions.evaluation.judging import (
    WinRate,
    judge_messages,
    judge_request,
    outcome_for_policy,
    parse_verdict,
    resolve_pair,
    summarize,
)
from sdpo_interactions.evaluation.report import markdown_table
from sdpo_interactions.testing.messages_server import SAMPLING_API_VERSION, MessagesServer
from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages
from sdpo_interactions.run_files import RUN_SETTINGS_NAME, append_jsonl
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer

from fakes import CannedUser

REPO = Path(__file__).resolve().parents[1]
STYLE = "concise_casual_beginner"
# Short held-out requests keep generation cheap. The `ID:p1` tag lets the loopback server fail that prompt's
# judge requests on purpose.
HELD_OUT = [
    "My cat knocks glasses off the table at night. How do I stop her?",
    "Ticket ID:p1 - my laptop fan is loud all the time. Is that bad?",
    "Is it rude to leave a party without saying goodbye?",
]
LOCAL_N = 1  # the local run judges one request (a judge prompt is ~240 tokens)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------
# Pure pieces, by hand
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A", "A"), ("B", "B"), ("C", "C"), ("b", "B"), (" **A** ", "A"), ("[[C]]", "C"), ("(B).", "B"),
        ("B\n\nResponse B is shorter and friendlier.", "B"),
        ("A. It gets to the point.", "A"),
        ("The better response is B.", "B"),
        ("Response A is better.", "A"),
        ("I prefer response A because it is shorter.", "A"),
        ("Final answer: C", "C"),
        ("Verdict: [[A]]", "A"),
        ("It's a tie.", "C"),
        ("<think>\nA or B? B is shorter.\n</think>\n\nB", "B"),
        ("Between A and B, the better response is B.", "B"),
    ],
)
def test_parse_verdict_reads_clean_and_verbose_answers(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "text",
    [
        "", None, "Hello world", "<response_a>", "D", "AB",
        "A better answer would mention the cost.",  # "A" is an article here, not a verdict
        "Response A is too long, response B is too short.",  # names both: ambiguous
        "<think>\nprobably B\n</think>",  # only thinking, no answer
        "You choose to prefer response A, B, or C.",  # the choices echoed back (SmolLM2 does this)
        "Answer A, B or C.", "Both A and B are fine.", "Pick A/B/C",
    ],
)
def test_parse_verdict_refuses_garbage_and_ambiguity(text):
    assert parse_verdict(text) is None


def test_outcome_reads_the_verdict_from_the_policys_position():
    assert outcome_for_policy("A", "A") == "win"
    assert outcome_for_policy("B", "A") == "loss"
    assert outcome_for_policy("B", "B") == "win"
    assert outcome_for_policy("A", "B") == "loss"
    assert outcome_for_policy("C", "A") == outcome_for_policy("C", "B") == "tie"
    assert outcome_for_policy(None, "A") is None


def test_swapped_judgments_agree_or_make_a_tie_and_a_missing_one_is_invalid():
    assert resolve_pair("win", "win") == "win"
    assert resolve_pair("loss", "loss") == "loss"
    assert resolve_pair("tie", "tie") == "tie"
    assert resolve_pair("win", "loss") == "tie"  # position bias: the judge always picked the same slot
    assert resolve_pair("win", "tie") == "tie"
    assert resolve_pair("tie", "loss") == "tie"
    assert resolve_pair(None, "win") == "invalid"
    assert resolve_pair("loss", None) == "invalid"


def test_win_rate_from_hand_made_verdict_pairs():
    # (verdict with the policy as A, verdict with the policy as B) for ten pairs.
    verdicts = [
        ("A", "B"), ("A", "B"), ("A", "B"), ("A", "B"), ("A", "B"), ("A", "B"),  # 6 wins
        ("B", "A"), ("B", "A"),  # 2 losses
        ("A", "A"),  # position bias -> tie
        ("C", "C"),  # tie
        ("C", "B"),  # tie and win disagree -> tie
        ("A", None),  # second verdict unparseable -> invalid
    ]
    outcomes = [resolve_pair(outcome_for_policy(a, "A"), outcome_for_policy(b, "B")) for a, b in verdicts]
    result = summarize(outcomes)
    assert (result.pairs, result.wins, result.losses, result.ties, result.invalid) == (12, 6, 2, 3, 1)
    assert result.win_rate == pytest.approx(6 / 8)
    assert result.stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 8))  # 0.1531
    assert result.stderr == pytest.approx(0.153093, abs=1e-6)
    assert result.tie_rate == pytest.approx(3 / 11)


def test_win_rate_without_decisive_pairs_is_not_a_number():
    result = summarize(["tie", "tie", "invalid"])
    assert math.isnan(result.win_rate) and math.isnan(result.stderr)
    assert result.tie_rate == 1.0
    assert math.isnan(WinRate(0, 0, 0, 0, 0).tie_rate)
    assert summarize(["win"]).stderr == 0.0
    with pytest.raises(ValueError, match="draw"):
        summarize(["win", "draw"])


def test_judge_sees_the_persona_as_system_prompt_and_both_labelled_responses():
    system, user = judge_messages(STYLE_PERSONAS[STYLE], "Fix my bike?", "first answer", "second answer")
    assert system["role"] == "system" and STYLE_PERSONAS[STYLE] in system["content"]
    assert user["role"] == "user"
    text = user["content"]
    assert text.index("Fix my bike?") < text.index("first answer") < text.index("second answer")
    assert "[Response A]\nfirst answer\n[End of response A]" in text
    assert "[Response B]\nsecond answer\n[End of response B]" in text


def test_jsonl_reads_skip_a_torn_last_line_and_appends_start_a_fresh_one(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "v": 1}\n{"key": "b", "v"')  # a crash in the middle of the second append
    assert list(read_jsonl_by_key(path)) == ["a"]
    append_jsonl(path, [{"key": "c", "v": 3}])
    assert {k: r["v"] for k, r in read_jsonl_by_key(path).items()} == {"a": 1, "c": 3}
    path.write_text('{"key": "a"}\nnot json\n{"key": "c"}\n')
    with pytest.raises(ValueError, match=r"j\.jsonl:2: malformed JSON"):
        read_jsonl_by_key(path)


# ---------------------------------------------------------------------------------------------------------------
# A real short training run: two checkpoints
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two OpenMP threads on two CPU cores shared with other jobs spin against each other: one is faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    args = OnlineSDPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=2,
        save_steps=1, max_completion_length=4, learning_rate=1e-3, logging_steps=1, token_log_samples=0,
        report_to=[], bf16=False, gradient_checkpointing=False, seed=3,
    )
    requests = ["Summarise: my neighbour mows his lawn at 6am every Sunday.", "Summarise: I lost my keys twice."]
    trainer = OnlineSDPOTrainer(
        model=tiny_model_dir, user_simulator=CannedUser(), args=args,
        train_dataset=Dataset.from_list([{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in requests]),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        run_settings={"system_prompt_name": "tldr", "system_prompt": SYSTEM_PROMPTS["tldr"]},
    )
    trainer.train()
    assert (output_dir / "checkpoint-1" / RUN_SETTINGS_NAME).is_file()
    assert (output_dir / "checkpoint-2" / RUN_SETTINGS_NAME).is_file()
    return output_dir


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "held_out.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in HELD_OUT))
    return path


def eval_args(run_dir, held_out, model, output_dir, **overrides):
    settings = dict(
        run_dir=str(run_dir), ckpts=[1, 2], data_path=str(held_out), eval_n=len(HELD_OUT), baseline=model,
        judge="local", judge_model=model, judge_max_new_tokens=2, output_dir=str(output_dir),
        baseline_cache=str(Path(output_dir).parent / "baseline_responses.jsonl"), oracle=False,
    )
    settings.update(overrides)
    return EvalArguments(**settings)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a model (policy, baseline or local judge) fails the test."""

    def refuse(self, name_or_path, *args, **kwargs):
        raise AssertionError(f"a model was loaded: {name_or_path}")

    monkeypatch.setattr(generation.ChatModel, "__init__", refuse)


@pytest.fixture
def new_token_counts(monkeypatch):
    """The tokens each local generate() call added (its longest answer, padding included), in call order."""
    counts = []
    original = generation.generate_exactly

    def counting(model, inputs, config):
        output = original(model, inputs, config)
        counts.append(output.shape[1] - inputs["input_ids"].shape[1])
        return output

    monkeypatch.setattr(generation, "generate_exactly", counting)
    return counts


@pytest.fixture
def judge_calls(monkeypatch):
    """Counts the conversations the local judge answers (the real judge still answers them)."""
    calls = []
    original = judges.LocalJudge.complete

    def counting(self, conversations):
        calls.append(len(conversations))
        return original(self, conversations)

    monkeypatch.setattr(judges.LocalJudge, "complete", counting)
    return calls


@pytest.fixture(scope="module")
def local_eval(run_dir, held_out, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "eval"
    args = eval_args(run_dir, held_out, tiny_model_dir, out, eval_n=LOCAL_N)
    rows = evaluate.evaluate(args)
    return dict(args=args, rows=rows, out=out)


def records_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# End to end with the local judge, and resume
# ---------------------------------------------------------------------------------------------------------------


def test_local_evaluation_writes_table_plot_and_every_judgment(local_eval, run_dir):
    out = local_eval["out"]
    records = records_of(out / "judgments.jsonl")
    assert len(records) == 2 * LOCAL_N
    prompts = {r["prompt"] for r in records}
    assert len(prompts) == LOCAL_N and prompts <= set(HELD_OUT)
    assert sorted((r["step"], r["prompt"]) for r in records) == sorted((s, p) for s in (1, 2) for p in prompts)
    for r in records:
        assert r["style"] == STYLE and r["checkpoint"] == f"checkpoint-{r['step']}"
        assert r["persona"] == CannedUser.persona  # the text the run trained with, not today's built-in
        assert r["messages"][0] == {"role": "system", "content": SYSTEM_PROMPTS["tldr"]}  # the run's own prompt
        assert r["generation"]["chat_template_kwargs"] == {"enable_thinking": False}
        assert r["generation"]["max_new_tokens"] == 4  # the run's max_completion_length
        assert len(r["raw_judgments"]) == 2 and all(isinstance(t, str) for t in r["raw_judgments"])
        assert r["verdicts"] == [parse_verdict(t) for t in r["raw_judgments"]]
        expected = resolve_pair(outcome_for_policy(r["verdicts"][0], "A"), outcome_for_policy(r["verdicts"][1], "B"))
        assert r["outcome"] == expected
    # The baseline answered each prompt once, for both checkpoints.
    baseline = records_of(Path(local_eval["args"].baseline_cache))
    assert len(baseline) == LOCAL_N
    by_prompt = {b["prompt"][-1]["content"]: b["response"] for b in baseline}
    assert all(r["baseline_response"] == by_prompt[r["prompt"]] for r in records)

    # Table rows are the counts of the judgments file.
    rows = {row["step"]: row for row in local_eval["rows"]}
    assert sorted(rows) == [1, 2]
    # One answer per step on one process: checkpoint-1 had seen one interaction, checkpoint-2 two.
    assert rows[1]["interactions"] == 1 and rows[2]["interactions"] == 2
    with open(out / "win_rates.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(t["step"]) for t in table] == [1, 2]
    for t in table:
        mine = [r["outcome"] for r in records if r["step"] == int(t["step"])]
        for outcome, column in (("win", "wins"), ("loss", "losses"), ("tie", "ties"), ("invalid", "invalid")):
            assert int(t[column]) == mine.count(outcome) == rows[int(t["step"])][column]
        assert int(t["pairs"]) == LOCAL_N
    markdown = (out / "win_rates.md").read_text()
    assert re.search(r"^\| 1 \| 1 \| 1 \|", markdown, re.M) and re.search(r"^\| 2 \| 2 \| 1 \|", markdown, re.M)

    png = (out / "win_rate.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    image = matplotlib.image.imread(out / "win_rate.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_rerun_makes_no_judge_call_and_loads_no_model(local_eval, no_model_loads, judge_calls):
    out = local_eval["out"]
    before = {name: (out / name).read_bytes() for name in ("judgments.jsonl", "win_rates.csv", "win_rates.md")}
    evaluate.evaluate(local_eval["args"])
    assert judge_calls == []
    assert {name: (out / name).read_bytes() for name in before} == before


# ---------------------------------------------------------------------------------------------------------------
# Claude judge: the real SDK against a loopback server
# ---------------------------------------------------------------------------------------------------------------


def between(text, label):
    """The text of "request", "A" or "B" in a judge prompt."""
    if label == "request":
        return re.search(r'"""\n(.*?)\n"""', text, re.S).group(1)
    return re.search(rf"\[Response {label}\]\n(.*?)\n\[End of response {label}\]", text, re.S).group(1)


def shorter_wins(body):
    """A concise user: prefers the shorter response, says so verbosely; cannot decide about parties. Either wire
    format: the judge's turn is the last message (an OpenAI request has the system prompt before it)."""
    text = body["messages"][-1]["content"]
    if "goodbye" in between(text, "request"):
        return "Hard to say, honestly."
    a, b = len(between(text, "A")), len(between(text, "B"))
    return "It's a tie." if a == b else f"The better response is {'A' if a < b else 'B'}."


@pytest.fixture
def claude_env(monkeypatch):
    server = MessagesServer(reply=shorter_wins).start()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-MARKER")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    yield server
    server.stop()


def test_claude_judge_sends_persona_and_both_orders_and_skips_failed_pairs(claude_env):
    args = EvalArguments(
        run_dir=str(REPO), data_path=str(REPO / "README.md"), judge="claude", judge_api_max_retries=0,
        judge_max_new_tokens=7,
    )
    judge = judges.build_judge(args)
    pairs = [
        {"style": STYLE, "persona": STYLE_PERSONAS[STYLE], "prompt": "Fix my bike?", "policy_response": "Pump tyres.",
         "baseline_response": "A much longer text."},
        {"style": STYLE, "persona": STYLE_PERSONAS[STYLE], "prompt": "ID:bad Oil?", "policy_response": "Yes, oil it well.", "baseline_response": "Yes."},
    ]
    claude_env.add_fault("bad", "server_error", times=1)  # the first request of the second pair fails for good
    records = judging.judge_pairs(judge, pairs)
    assert len(records) == 1 and records[0]["prompt"] == "Fix my bike?"
    assert records[0]["raw_judgments"] == ["The better response is A.", "The better response is B."]
    assert records[0]["verdicts"] == ["A", "B"] and records[0]["outcome"] == "win"
    assert claude_env.hits() == 4
    for logged in claude_env.requests:
        assert logged.body["model"] == "claude-haiku-4-5-20251001" and logged.body["max_tokens"] == 7
        assert STYLE_PERSONAS[STYLE] in logged.body["system"]
        assert logged.body["temperature"] == 0.0
        assert logged.headers["anthropic-version"] == SAMPLING_API_VERSION
    first = [r.body["messages"][0]["content"] for r in claude_env.requests if r.tag is None]
    assert sorted(between(t, "A") for t in first) == ["A much longer text.", "Pump tyres."]  # both positions


def test_claude_evaluation_end_to_end_with_failures_and_resume(claude_env, local_eval, run_dir, held_out,
                                                               tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    args = eval_args(run_dir, held_out, tiny_model_dir, out, judge="claude", judge_model="claude-haiku-4-5-20251001",
                     judge_api_max_retries=0, baseline_cache=local_eval["args"].baseline_cache)
    claude_env.add_fault("p1", "server_error", times=None)  # this prompt's judge requests fail for good
    cached_baseline = records_of(args.baseline_cache)

    rows = evaluate.evaluate(args)
    baseline = records_of(args.baseline_cache)
    assert baseline[:LOCAL_N] == cached_baseline and len(baseline) == len(HELD_OUT)  # only the new prompt's
    records = records_of(out / "judgments.jsonl")
    assert sorted(r["prompt"] for r in records) == sorted([HELD_OUT[0], HELD_OUT[2]] * 2)
    assert [row["pairs"] for row in rows] == [2, 2]  # the failed pairs are missing, not counted as ties
    for r in records:
        if "goodbye" in r["prompt"]:
            assert r["verdicts"] == [None, None] and r["outcome"] == "invalid"
            continue
        mine, theirs = len(r["policy_response"]), len(r["baseline_response"])
        assert r["outcome"] == ("tie" if mine == theirs else "win" if mine < theirs else "loss")
    for row in rows:
        assert row["invalid"] == 1 and row["wins"] + row["losses"] + row["ties"] == 1

    # The API is healthy again, and the last append was cut short by a crash: the re-run judges exactly the two
    # failed pairs and the torn one, each in both positions.
    claude_env.reset()
    text = (out / "judgments.jsonl").read_text()
    torn = json.loads(text.splitlines()[-1])
    (out / "judgments.jsonl").write_text(text[: text.rindex("\n", 0, -1) + 1] + text.splitlines()[-1][:30])
    rows = evaluate.evaluate(args)
    assert claude_env.hits() == 6
    assert sum("ID:p1" in r.body["messages"][0]["content"] for r in claude_env.requests) == 4
    assert [row["pairs"] for row in rows] == [3, 3]
    rejudged = read_jsonl_by_key(out / "judgments.jsonl")
    assert len(rejudged) == 6 and rejudged[torn["key"]]["policy_response"] == torn["policy_response"]  # greedy

    claude_env.reset()
    evaluate.evaluate(args)
    assert claude_env.hits() == 0


def test_claude_judge_without_api_key_fails_before_any_model_loads(run_dir, held_out, tiny_model_dir, tmp_path,
                                                                   monkeypatch, no_model_loads):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    args = eval_args(run_dir, held_out, tiny_model_dir, tmp_path / "eval", judge="claude", judge_model=None)
    assert args.judge_model == "claude-haiku-4-5-20251001"
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY is not set"):
        evaluate.evaluate(args)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible judge (a vLLM-served Qwen3-8B, say): the real `openai` SDK against the loopback server
# ---------------------------------------------------------------------------------------------------------------

JUDGE_KEY = "sk-judge-SECRET-MARKER-9c1"
PAIR = {"style": STYLE, "persona": STYLE_PERSONAS[STYLE], "prompt": "Fix my bike? ID:bike",
        "policy_response": "Pump tyres.", "baseline_response": "A much longer text."}


@pytest.fixture
def served_judge(monkeypatch):
    server = MessagesServer(reply=shorter_wins).start()
    monkeypatch.setenv("JUDGE_API_KEY", JUDGE_KEY)
    monkeypatch.setenv("USER_API_KEY", "sk-user-not-for-the-judge")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield server
    server.stop()


def served_judge_flags(server, **overrides):
    return {"judge": "openai", "judge_api_base": server.url + "/v1", "judge_api_model": "Qwen/Qwen3-8B",
            "judge_api_max_retries": 2, "judge_api_timeout": 5.0, **overrides}


def lower_headers(logged):
    return {name.lower(): value for name, value in logged.headers.items()}


def test_openai_judge_retries_429_and_5xx_and_sends_what_a_served_qwen_needs(served_judge, caplog, capsys):
    args = EvalArguments(run_dir=str(REPO), data_path=str(REPO / "README.md"), judge_max_new_tokens=5,
                         **served_judge_flags(served_judge))
    judge = judges.build_judge(args)
    served_judge.add_fault("bike", "rate_limit", retry_after=0.01)  # both orders carry the tag: one gets the 429,
    served_judge.add_fault("bike", "server_error")  # one (maybe the same) the 500; the SDK retries both
    failing = {**PAIR, "prompt": "Oil? ID:bad"}
    served_judge.add_fault("bad", "server_error", times=None)
    records = judging.judge_pairs(judge, [PAIR, failing])
    assert [r["prompt"] for r in records] == [PAIR["prompt"]]  # the failed pair is left for a re-run
    assert records[0]["verdicts"] == ["A", "B"] and records[0]["outcome"] == "win"
    assert sorted(r.outcome for r in served_judge.requests if r.tag == "bike") == [
        "ok", "ok", "rate_limit", "server_error"]
    assert served_judge.hits("bad") == 2 * 3  # both orders, each tried 1 + 2 retries
    system = judge_messages(STYLE_PERSONAS[STYLE], "", "", "")[0]
    for logged in served_judge.requests:
        body = logged.body
        assert (body["model"], body["max_tokens"], body["temperature"]) == ("Qwen/Qwen3-8B", 5, 0.0)
        assert body["chat_template_kwargs"] == {"enable_thinking": False}  # no thinking within 5 tokens
        assert body["messages"][0] == system and body["messages"][1]["role"] == "user"
        assert lower_headers(logged)["authorization"] == f"Bearer {JUDGE_KEY}"  # JUDGE_API_KEY, not USER_API_KEY
    assert "2/4 openai judge requests failed" in caplog.text
    printed = capsys.readouterr()
    assert JUDGE_KEY not in caplog.text + printed.out + printed.err + repr(judge.client)


def test_openai_judge_falls_back_to_openai_api_key(served_judge, monkeypatch):
    monkeypatch.delenv("JUDGE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-MARKER")
    args = EvalArguments(run_dir=str(REPO), data_path=str(REPO / "README.md"), **served_judge_flags(served_judge))
    assert judges.build_judge(args).complete([judge_messages("p", "Fix my bike?", "a", "bb")]) == [
        "The better response is A."]
    (logged,) = served_judge.requests
    assert lower_headers(logged)["authorization"] == "Bearer sk-openai-MARKER"


# ---------------------------------------------------------------------------------------------------------------
# An offline run on held-out conversations
# ---------------------------------------------------------------------------------------------------------------

CONVERSATIONS = [
    {"messages": [
        {"role": "user", "content": "How do I boil an egg with a soft yolk?"},
        {"role": "assistant", "content": "Great question! First, the science of egg proteins, which set at "
                                         "different temperatures: ... then simmer for 6 minutes.", "truncated": False},
        {"role": "user", "content": "Shorter please, just the minutes."},
        {"role": "assistant", "content": "6 minutes."},
    ]},
    {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]},
]


def conversation_prompts(system_prompt):
    """What the two conversations above give: each user turn with everything before it."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    first, answer, follow_up = ({"role": m["role"], "content": m["content"]} for m in CONVERSATIONS[0]["messages"][:3])
    return [system + [first], system + [first, answer, follow_up],
            [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]]


@pytest.fixture(scope="module")
def conversations_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("conversations") / "validation.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS + CONVERSATIONS[1:]))  # one duplicate
    return path


def test_held_out_conversations_give_each_request_with_its_context(conversations_file, tiny_model_dir, tmp_path):
    key = json.dumps
    prompts = load_held_out(str(conversations_file), "SYS")
    assert sorted(map(key, prompts)) == sorted(map(key, conversation_prompts("SYS")))  # marks gone, no duplicate
    assert sorted(map(key, load_held_out(str(conversations_file), ""))) == sorted(map(key, conversation_prompts("")))
    assert load_held_out(str(conversations_file), "", n=2, seed=1) == load_held_out(str(conversations_file), "", n=2,
                                                                                    seed=1)
    assert len(load_held_out(str(conversations_file), "", n=2, seed=1)) == 2
    # Over the token budget a conversation loses its earliest exchange, as offline training fits it.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short, long, terse = conversation_prompts("")
    limit = max(len(tokenizer.apply_chat_template(p, add_generation_prompt=True)) for p in (short, terse))
    fitted = load_held_out(str(conversations_file), "", tokenizer=tokenizer, max_prompt_tokens=limit)
    assert sorted(map(key, fitted)) == sorted(map(key, [short, [long[-1]], terse]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r'bad\.jsonl:1: expected \{"prompt": "..."\} .* or \{"messages"'):
        load_held_out(str(bad), "")


def test_the_judge_reads_a_follow_up_with_the_turns_before_it():
    assert judge_request([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi?"}]) == "Hi?"
    assert judge_request(conversation_prompts("S")[1]) == (
        "(Earlier in our conversation)\nMe: How do I boil an egg with a soft yolk?\n\nAssistant: "
        + CONVERSATIONS[0]["messages"][1]["content"] + "\n\n(My request now)\nShorter please, just the minutes.")
    with pytest.raises(ValueError, match="ends with the user's request"):
        judge_request([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}])


@pytest.fixture(scope="module")
def offline_run(run_dir, tmp_path_factory):
    """The trained checkpoints as an offline run stores them: mode offline, no persona, no system prompt."""
    out = tmp_path_factory.mktemp("offline") / "run"
    for step in (1, 2):
        source, target = run_dir / f"checkpoint-{step}", out / f"checkpoint-{step}"
        target.mkdir(parents=True)
        for item in source.iterdir():
            if item.name != RUN_SETTINGS_NAME:
                (target / item.name).symlink_to(item)
        settings = json.loads((source / RUN_SETTINGS_NAME).read_text())
        for name in ("style", "persona", "system_prompt", "system_prompt_name", "user_simulator"):
            settings.pop(name, None)
        (target / RUN_SETTINGS_NAME).write_text(json.dumps({**settings, "mode": "offline"}))
    return out


def test_offline_run_on_held_out_conversations_with_a_served_judge_and_max_new_tokens(
        offline_run, conversations_file, served_judge, tiny_model_dir, new_token_counts, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger=evaluate.__name__)
    out = tmp_path / "eval"
    args = EvalArguments(run_dir=str(offline_run), data_path=str(conversations_file), baseline=tiny_model_dir,
                         style="no_emojis", max_new_tokens=3, output_dir=str(out), oracle=False,
                         **served_judge_flags(served_judge))
    rows = evaluate.evaluate(args)
    records = records_of(out / "judgments.jsonl")
    expected = conversation_prompts("")  # an offline run's prompts are the conversations as logged
    assert sorted(json.dumps(r["messages"]) for r in records) == sorted(json.dumps(p) for p in expected * 2)
    for r in records:
        assert r["persona"] == STYLE_PERSONAS["no_emojis"] and r["judge"] == "openai"
        assert r["generation"]["max_new_tokens"] == 3  # --max_new_tokens wins over the run's 4, and is recorded
        assert r["prompt"] == judge_request(r["messages"])
    assert new_token_counts and max(new_token_counts) <= 3  # and generation obeyed it
    assert served_judge.hits() == 2 * len(records)
    assert [(row["max_new_tokens"], row["mode"]) for row in rows] == [(3, "offline"), (3, "offline")]
    assert "not the run's max_completion_length=4" in caplog.text
    with open(out / "win_rates.csv", newline="") as f:
        assert [(t["max_new_tokens"], t["mode"]) for t in csv.DictReader(f)] == [("3", "offline")] * 2
    caption = (out / "win_rates.md").read_text()
    assert "logged (answer, user reply) samples" in caption and "simulated user" not in caption
    assert "up to 3 new tokens" in caption
    printed = capsys.readouterr()
    assert re.search(r"Judging pairs: 100%.* 6/6", printed.err)  # progress with counts
    assert re.search(r"checkpoint-2 responses: 100%.* 3/3", printed.err)
    saved = "".join(path.read_text(errors="replace") for path in out.rglob("*") if path.is_file())
    assert JUDGE_KEY not in saved + caplog.text + printed.out + printed.err


def test_every_missing_setting_is_reported_at_once(tmp_path, held_out, no_model_loads):
    fake_checkpoint(tmp_path / "checkpoint-1", settings="{}")
    fake_checkpoint(tmp_path / "checkpoint-2", settings=json.dumps({"mode": "offline", "max_completion_length": 8}))
    with pytest.raises(ValueError) as err:
        evaluate.evaluate(EvalArguments(run_dir=str(tmp_path), ckpts=[1, 2], data_path=str(held_out)))
    first, second = (tmp_path / f"checkpoint-{step}" / RUN_SETTINGS_NAME for step in (1, 2))
    assert str(err.value).splitlines() == [
        "Cannot evaluate with these run settings:",
        f"  {first}: no 'style'; pass --style",
        f"  {first}: no 'system_prompt'; pass --system_prompt",
        f"  {first}: no 'max_completion_length'; pass --max_new_tokens",
        f"  {second}: no 'style' (an offline run learned from logged users, not from a persona); pass --style",
    ]
    plans = evaluate.plan_checkpoints(EvalArguments(run_dir=str(tmp_path), ckpts=[1, 2], data_path=str(held_out),
                                                    style="poetic", system_prompt="general", max_new_tokens=5))
    assert [(p.mode, p.style, p.generation.system_prompt, p.generation.max_new_tokens) for p in plans] == [
        ("online", "poetic", "", 5), ("offline", "poetic", "", 5)]


def test_the_command_line_reports_missing_settings_as_one_error(tmp_path, held_out, no_model_loads, monkeypatch,
                                                                capsys):
    fake_checkpoint(tmp_path / "checkpoint-1", settings=json.dumps({"mode": "offline", "max_completion_length": 8}))
    monkeypatch.setattr(sys, "argv", ["evaluate_run.py", "--run_dir", str(tmp_path), "--ckpts", "1", "--data_path",
                                      str(held_out)])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.cli()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot evaluate with these run settings:\n") and "pass --style" in err
    assert "Traceback" not in err


def test_the_caption_says_what_the_interactions_of_each_mode_count():
    row = {"step": 1, "interactions": 8, "checkpoint": "checkpoint-1", "style": "poetic", "pairs": 2, "wins": 1,
           "losses": 1, "ties": 0, "invalid": 0, "win_rate": 0.5, "stderr": 0.35, "tie_rate": 0.0, "baseline": "b",
           "judge_model": "j", "max_new_tokens": 64}
    online, offline = markdown_table([{**row, "mode": "online"}]), markdown_table([{**row, "mode": "offline"}])
    assert "answers the simulated user had replied to" in online and "up to 64 new tokens" in online
    assert "simulated user" not in offline and "logged (answer, user reply) samples" in offline


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, before any model loads
# ---------------------------------------------------------------------------------------------------------------


def fake_checkpoint(path, config=True, weights=True, settings='{"style": "concise_casual_beginner"}'):
    path.mkdir(parents=True)
    if config:
        (path / "config.json").write_text("{}")
    if weights:
        (path / "model.safetensors").write_text("")
    if settings is not None:
        (path / RUN_SETTINGS_NAME).write_text(settings)


def test_missing_and_incomplete_checkpoints_are_named_before_any_model_loads(tmp_path, held_out, no_model_loads):
    fake_checkpoint(tmp_path / "checkpoint-3")
    fake_checkpoint(tmp_path / "checkpoint-6", weights=False, settings=None)
    fake_checkpoint(tmp_path / "checkpoint-9", config=False)
    args = EvalArguments(run_dir=str(tmp_path), ckpts=[3, 6, 9, 12], data_path=str(held_out))
    with pytest.raises(FileNotFoundError) as err:
        evaluate.evaluate(args)
    message = str(err.value)
    assert "checkpoint-3" not in message
    assert f"{tmp_path / 'checkpoint-6'}: no model weights" in message
    assert f"{tmp_path / 'checkpoint-6'}: no {RUN_SETTINGS_NAME}" in message
    assert f"{tmp_path / 'checkpoint-9'}: no config.json" in message
    assert f"{tmp_path / 'checkpoint-12'}: no such checkpoint folder" in message


def test_bad_run_settings_are_named_before_any_model_loads(tmp_path, held_out, no_model_loads):
    fake_checkpoint(tmp_path / "checkpoint-1", settings='{"style": "grumpy"}')
    fake_checkpoint(tmp_path / "checkpoint-2", settings='{\n  "style": oops\n}')
    with pytest.raises(ValueError, match=r"checkpoint-1/sdpo_run_settings\.json: Unknown style 'grumpy'. Known styles"):
        evaluate.evaluate(EvalArguments(run_dir=str(tmp_path), ckpts=[1], data_path=str(held_out)))
    with pytest.raises(ValueError, match=r"checkpoint-2/sdpo_run_settings\.json:2: malformed JSON"):
        evaluate.evaluate(EvalArguments(run_dir=str(tmp_path), ckpts=[2], data_path=str(held_out)))
    # A settings file without the run's prompt format needs the fallback flags, and says which.
    fake_checkpoint(tmp_path / "checkpoint-3")
    with pytest.raises(ValueError, match=r"checkpoint-3/sdpo_run_settings\.json: no 'system_prompt'; pass --system_"):
        evaluate.evaluate(EvalArguments(run_dir=str(tmp_path), ckpts=[3], data_path=str(held_out)))


SETTINGS = {"style": "poetic", "system_prompt": "", "max_completion_length": 8}


def test_by_default_every_complete_checkpoint_is_evaluated(tmp_path, held_out, no_model_loads, caplog):
    for step in (3, 6, 8):
        fake_checkpoint(tmp_path / f"checkpoint-{step}", settings=json.dumps({**SETTINGS, "interactions": {
            "answers": 32 * step, "with_feedback": 31 * step}}))
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    fake_checkpoint(tmp_path / "checkpoint-9", settings=None)  # a save cut short: no run settings yet
    plans = evaluate.plan_checkpoints(EvalArguments(run_dir=str(tmp_path), data_path=str(held_out)))
    assert [plan.step for plan in plans] == [3, 6, 8]
    assert [plan.interactions for plan in plans] == [93, 186, 248]
    assert "Skipping incomplete checkpoint" in caplog.text and "checkpoint-9" in caplog.text


def test_the_judge_plays_the_stored_persona_text_unless_told_otherwise(tmp_path, held_out, no_model_loads):
    stored = {**SETTINGS, "persona": "You want replies in rhyming couplets only."}
    fake_checkpoint(tmp_path / "checkpoint-1", settings=json.dumps(stored))
    (plan,) = evaluate.plan_checkpoints(EvalArguments(run_dir=str(tmp_path), ckpts=[1], data_path=str(held_out)))
    assert (plan.style, plan.persona) == ("poetic", stored["persona"])
    (plan,) = evaluate.plan_checkpoints(
        EvalArguments(run_dir=str(tmp_path), ckpts=[1], data_path=str(held_out), style="no_emojis")
    )
    assert (plan.style, plan.persona) == ("no_emojis", STYLE_PERSONAS["no_emojis"])
    mine = tmp_path / "mine.yaml"
    mine.write_text("pirate: You want every answer in pirate speak.\n")
    (plan,) = evaluate.plan_checkpoints(EvalArguments(
        run_dir=str(tmp_path), ckpts=[1], data_path=str(held_out), style="pirate", persona_file=str(mine)))
    assert plan.persona == "You want every answer in pirate speak."
    with pytest.raises(ValueError, match="--persona_file needs --style"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(held_out), persona_file=str(mine))


def test_run_without_checkpoints_and_bad_flags_are_refused(tmp_path, held_out):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint-<N> folders"):
        evaluate.evaluate(EvalArguments(run_dir=str(tmp_path), data_path=str(held_out)))
    with pytest.raises(FileNotFoundError, match="--run_dir: no such folder"):
        EvalArguments(run_dir=str(tmp_path / "nope"), data_path=str(held_out))
    with pytest.raises(FileNotFoundError, match="--data_path: no such file"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="Unknown --judge 'gpt'; choose one of local, claude, openai"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(held_out), judge="gpt")
    with pytest.raises(ValueError, match="Known styles"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(held_out), style="grumpy")
    with pytest.raises(ValueError, match="contradict"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(held_out), temperature=0.7, use_run_temperature=True)


# ---------------------------------------------------------------------------------------------------------------
# Launch scripts
# ---------------------------------------------------------------------------------------------------------------

SCRIPT_VARS = ["RUN_DIR", "DATA_PATH", "CKPTS", "BASELINE", "JUDGE_MODEL", "EVAL_N", "WORLD_SIZE", "STYLE",
               "MAX_PROMPT_TOKENS", "ACCELERATE_CONFIG", "OUTPUT_DIR", "PYTHON", "ANTHROPIC_API_KEY", "HF_TOKEN",
               "JUDGE_API_BASE", "JUDGE_API_MODEL", "JUDGE_API_KEY", "MAX_NEW_TOKENS"]


def run_script(name, *args, **env):
    base = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=60)


def printed_command(stdout):
    lines = stdout.splitlines()
    return shlex.split(lines[lines.index("command:") + 1])


@pytest.mark.parametrize("script, judge, judge_model, data, max_prompt_tokens", [
    ("eval_checkpoints_tldr.sh", "local", "Qwen/Qwen3-8B", "data/tldr_prompts_unique/validation.jsonl", "512"),
    ("eval_checkpoints.sh", "claude", "claude-haiku-4-5-20251001", "data/helpsteer2_prompts/validation.jsonl", "512"),
])
def test_script_dry_run_defaults(script, judge, judge_model, data, max_prompt_tokens, tmp_path):
    result = run_script(script, "--dry-run", RUN_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    argv = printed_command(result.stdout)
    assert argv[:4] == ["accelerate", "launch", "--num_processes", "4"]
    assert argv[4] == str(REPO / "evaluate_run.py")
    assert "--ckpts" not in argv  # every complete checkpoint of the run
    flags = dict(zip(argv[5::1], argv[6::1]))
    assert flags["--run_dir"] == str(tmp_path) and flags["--data_path"] == str(REPO / data)
    assert flags["--eval_n"] == "256" and flags["--baseline"] == "Qwen/Qwen3-8B"
    assert flags["--judge"] == judge and flags["--judge_model"] == judge_model
    assert flags["--max_prompt_tokens"] == max_prompt_tokens
    assert "--style" not in argv and "--output_dir" not in argv  # the checkpoint's style, RUN_DIR/eval
    assert "dry run: nothing was executed" in result.stdout


def test_script_dry_run_overrides_parse_with_evaluate(tmp_path, held_out):
    run = tmp_path / "my run"
    run.mkdir()
    result = run_script(
        "eval_checkpoints.sh", "--dry-run", "--", "--batch_size", "2",
        RUN_DIR=str(run), DATA_PATH=str(held_out), CKPTS="2 4", BASELINE="base/model", JUDGE_MODEL="claude-x",
        EVAL_N="16", WORLD_SIZE="1", STYLE="poetic", OUTPUT_DIR=str(tmp_path / "out"), PYTHON="python3",
        ANTHROPIC_API_KEY="sk-ant-MARKER-123", HF_TOKEN="hf_MARKER_456",
    )
    assert result.returncode == 0, result.stderr
    assert "MARKER" not in result.stdout + result.stderr
    assert "ANTHROPIC_API_KEY: set" in result.stdout
    argv = printed_command(result.stdout)
    assert argv[:2] == ["python3", str(REPO / "evaluate_run.py")]
    (parsed,) = TrlParser((EvalArguments,)).parse_args_and_config(argv[2:])
    assert (parsed.run_dir, parsed.ckpts, parsed.data_path) == (str(run), [2, 4], str(held_out))
    assert (parsed.baseline, parsed.judge, parsed.judge_model) == ("base/model", "claude", "claude-x")
    assert parsed.eval_n == 16
    assert (parsed.style, parsed.output_dir, parsed.batch_size) == ("poetic", str(tmp_path / "out"), 2)


@pytest.mark.parametrize("script", ["eval_checkpoints.sh", "eval_checkpoints_tldr.sh"])
def test_script_with_a_served_judge_and_old_flags_parses_with_evaluate(script, tmp_path, held_out):
    result = run_script(
        script, "--dry-run", "--", "--claude_timeout", "30",
        RUN_DIR=str(tmp_path), DATA_PATH=str(held_out), JUDGE_API_BASE="http://judgehost:8000/v1",
        JUDGE_API_MODEL="Qwen/Qwen3-8B", JUDGE_API_KEY="sk-judge-MARKER", MAX_NEW_TOKENS="64", WORLD_SIZE="1",
    )
    assert result.returncode == 0, result.stderr  # no ANTHROPIC_API_KEY needed: Claude does not judge
    assert "MARKER" not in result.stdout + result.stderr and "JUDGE_API_KEY: set" in result.stdout
    (parsed,) = TrlParser((EvalArguments,)).parse_args_and_config(printed_command(result.stdout)[2:])
    assert (parsed.judge, parsed.judge_api_base, parsed.judge_model) == ("openai", "http://judgehost:8000/v1",
                                                                         "Qwen/Qwen3-8B")
    assert parsed.max_new_tokens == 64 and parsed.judge_api_timeout == 30  # the deprecated flag still works


def test_scripts_refuse_bad_input(tmp_path):
    assert run_script("eval_checkpoints_tldr.sh", "--bogus").returncode == 2
    assert run_script("eval_checkpoints_tldr.sh", "--dry-run", RUN_DIR=str(tmp_path), CKPTS="3 x").returncode == 2
    zero = run_script("eval_checkpoints_tldr.sh", "--dry-run", RUN_DIR=str(tmp_path), MAX_NEW_TOKENS="0")
    assert zero.returncode == 2 and "MAX_NEW_TOKENS must be a positive integer" in zero.stderr
    no_model = run_script("eval_checkpoints.sh", "--dry-run", RUN_DIR=str(tmp_path), JUDGE_API_BASE="http://j/v1")
    assert no_model.returncode == 2 and "JUDGE_API_MODEL is not" in no_model.stderr
    missing = run_script("eval_checkpoints_tldr.sh", RUN_DIR=str(tmp_path / "nope"))
    assert missing.returncode == 1 and "RUN_DIR: no such folder" in missing.stderr
    unset = run_script("eval_checkpoints_tldr.sh")
    assert unset.returncode == 1 and "RUN_DIR is not set" in unset.stderr
    no_key = run_script("eval_checkpoints.sh", RUN_DIR=str(tmp_path))
    assert no_key.returncode == 1 and "ANTHROPIC_API_KEY is not set" in no_key.stderr
    assert "command:" not in no_key.stdout
