"""evaluate.py: verdict parsing, swap-and-tie resolution and win-rate arithmetic by hand; early errors; the Claude
judge through the real `anthropic` SDK against a loopback server; end-to-end runs on the embedded model with two
checkpoints of a real short training run; resume; and the two launch scripts' dry runs.
"""

import csv
import json
import math
import os
import re
import shlex
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import TrlParser

import sdpo_interactions.cli.evaluate as evaluate
import sdpo_interactions.evaluation.generation as generation
import sdpo_interactions.evaluation.judging as judging
from sdpo_interactions.cli.evaluate import EvalArguments, read_jsonl_by_key
from sdpo_interactions.evaluation.judging import WinRate, judge_messages, outcome_for_policy, parse_verdict, resolve_pair, summarize
from sdpo_interactions.testing.messages_server import SAMPLING_API_VERSION, MessagesServer
from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages
from sdpo_interactions.run_files import RUN_SETTINGS_NAME, append_jsonl
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.users.base import UserSimulator

REPO = Path(__file__).resolve().parents[1]
STYLE = "concise_casual_beginner"
# Short held-out requests keep generation cheap. The `ID:p1` tag lets the loopback server fail that prompt's
# judge requests on purpose.
HELD_OUT = [
    "My cat knocks glasses off the table at night. How do I stop her?",
    "Ticket ID:p1 - my laptop fan is loud all the time. Is that bad?",
    "Is it rude to leave a party without saying goodbye?",
]
LOCAL_N = 1  # a local judge prompt is ~240 tokens, slow on two shared CPU cores: the local run judges one request
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


class CannedUser(UserSimulator):
    """A fixed reply: the checkpoints only need to come from real training steps, not from a real user."""

    style = STYLE
    persona = "You want one short line, no more. (The text this run trained with.)"

    def generate_feedback(self, prompts, completions):
        return ["Way too long, just give me one short line." for _ in prompts]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two OpenMP threads on two CPU cores shared with other jobs spin against each other: one is faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    args = OnlineSDPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=2,
        save_steps=1, max_completion_length=4, learning_rate=1e-3, logging_steps=1, token_log_samples=0,
        report_to=[], bf16=False, gradient_checkpointing=False, seed=3,
    )
    requests = ["Summarise: my neighbour mows his lawn at 6am every Sunday.", "Summarise: I lost my keys twice."]
    trainer = OnlineSDPOTrainer(
        model=model_dir, user_simulator=CannedUser(), args=args,
        train_dataset=Dataset.from_list([{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in requests]),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
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


def eval_args(run_dir, held_out, model_dir, output_dir, **overrides):
    settings = dict(
        run_dir=str(run_dir), ckpts=[1, 2], data_path=str(held_out), eval_n=len(HELD_OUT), baseline=model_dir,
        judge="local", judge_model=model_dir, judge_max_new_tokens=2, output_dir=str(output_dir),
        baseline_cache=str(Path(output_dir).parent / "baseline_responses.jsonl"),
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
def judge_calls(monkeypatch):
    """Counts the conversations the local judge answers (the real judge still answers them)."""
    calls = []
    original = judging.LocalJudge.complete

    def counting(self, conversations):
        calls.append(len(conversations))
        return original(self, conversations)

    monkeypatch.setattr(judging.LocalJudge, "complete", counting)
    return calls


@pytest.fixture(scope="module")
def local_eval(run_dir, held_out, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "eval"
    args = eval_args(run_dir, held_out, model_dir, out, eval_n=LOCAL_N)
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
    """A concise user: prefers the shorter response, says so verbosely; cannot decide about parties."""
    text = body["messages"][0]["content"]
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
        run_dir=str(REPO), data_path=str(REPO / "README.md"), judge="claude", claude_max_retries=0,
        judge_max_new_tokens=7,
    )
    judge = judging.ClaudeJudge(args)
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
                                                               model_dir, tmp_path):
    out = tmp_path / "eval"
    args = eval_args(run_dir, held_out, model_dir, out, judge="claude", judge_model="claude-haiku-4-5-20251001",
                     claude_max_retries=0, baseline_cache=local_eval["args"].baseline_cache)
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


def test_claude_judge_without_api_key_fails_before_any_model_loads(run_dir, held_out, model_dir, tmp_path,
                                                                   monkeypatch, no_model_loads):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    args = eval_args(run_dir, held_out, model_dir, tmp_path / "eval", judge="claude", judge_model=None)
    assert args.judge_model == "claude-haiku-4-5-20251001"
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY is not set"):
        evaluate.evaluate(args)


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
    with pytest.raises(ValueError, match="Unknown --judge 'gpt'; choose one of local, claude"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(held_out), judge="gpt")
    with pytest.raises(ValueError, match="Known styles"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(held_out), style="grumpy")
    with pytest.raises(ValueError, match="contradict"):
        EvalArguments(run_dir=str(tmp_path), data_path=str(held_out), temperature=0.7, use_run_temperature=True)


# ---------------------------------------------------------------------------------------------------------------
# Launch scripts
# ---------------------------------------------------------------------------------------------------------------

SCRIPT_VARS = ["RUN_DIR", "DATA_PATH", "CKPTS", "BASELINE", "JUDGE_MODEL", "EVAL_N", "WORLD_SIZE", "STYLE",
               "MAX_PROMPT_TOKENS", "ACCELERATE_CONFIG", "OUTPUT_DIR", "PYTHON", "ANTHROPIC_API_KEY", "HF_TOKEN"]


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


def test_scripts_refuse_bad_input(tmp_path):
    assert run_script("eval_checkpoints_tldr.sh", "--bogus").returncode == 2
    assert run_script("eval_checkpoints_tldr.sh", "--dry-run", RUN_DIR=str(tmp_path), CKPTS="3 x").returncode == 2
    missing = run_script("eval_checkpoints_tldr.sh", RUN_DIR=str(tmp_path / "nope"))
    assert missing.returncode == 1 and "RUN_DIR: no such folder" in missing.stderr
    unset = run_script("eval_checkpoints_tldr.sh")
    assert unset.returncode == 1 and "RUN_DIR is not set" in unset.stderr
    no_key = run_script("eval_checkpoints.sh", RUN_DIR=str(tmp_path))
    assert no_key.returncode == 1 and "ANTHROPIC_API_KEY is not set" in no_key.stderr
    assert "command:" not in no_key.stdout
