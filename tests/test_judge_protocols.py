"""The two judge protocols (--judge_protocol): reading a written letter, and the authors' log-probability protocol
(the labels' log-probabilities as the answer's first token, a tie within a margin). By hand, against the authors'
own decision rule, through the real `openai` SDK against a loopback server that returns chosen log-probabilities,
and on a local model against log-probabilities computed independently with plain transformers."""

import math
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sdpo_interactions.evaluation.judges as judges
import sdpo_interactions.evaluation.judging as judging
from sdpo_interactions.cli.evaluate import EvalArguments
from sdpo_interactions.evaluation.generation import ChatModel, label_spellings
from sdpo_interactions.evaluation.judging import judge_messages, label_logprobs, verdict_from_label_logprobs
from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.run_files import InputError
from sdpo_interactions.testing.messages_server import MessagesServer

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STYLE = "concise_casual_beginner"


# ------------------------------------------------------------------------------------------------ by hand
def test_each_label_takes_its_best_spelling_among_the_first_token_candidates():
    scores = label_logprobs([("A", -0.9), (" A", -0.4), ("\nB", -1.5), ("B", -2.0), ("The", -3.0), ("a", -0.1)])
    assert scores == {"A": -0.4, "B": -1.5, "C": None}  # "a" is not a label; C is not among the candidates


@pytest.mark.parametrize("scores, verdict", [
    ({"A": -0.05, "B": -3.0, "C": -4.0}, "A"),
    ({"A": -3.0, "B": -0.05, "C": -4.0}, "B"),
    ({"A": -0.70, "B": -0.75, "C": -4.0}, "C"),  # A leads B by 0.05 < 0.1: a tie
    ({"A": -0.70, "B": -0.80, "C": -4.0}, "A"),  # a lead of exactly the margin decides
    ({"A": -1.0, "B": -2.0, "C": -0.5}, "C"),  # the judge itself says tie
    ({"A": -0.3, "B": None, "C": None}, "A"),  # the others are not even among the candidates
    ({"A": None, "B": None, "C": None}, None),  # no label at all: invalid, never a tie
])
def test_the_verdict_from_label_logprobs_by_hand(scores, verdict):
    assert verdict_from_label_logprobs(scores, 0.1) == verdict


def authors_rule(a: float, b: float, c: float, margin: float) -> str:
    """The authors' StyleJudge._decide_from_scores, restated: A or B only when the best label is not C, it leads the
    runner-up by the margin, and A and B differ by the margin; else a tie."""
    ranked = sorted([a, b, c], reverse=True)
    best = max(range(3), key=lambda i: (a, b, c)[i])
    if ranked[0] - ranked[1] >= margin and best != 2 and abs(a - b) >= margin:
        return "A" if a > b else "B"
    return "C"


def test_the_rule_is_the_authors_on_random_scores():
    rng = random.Random(0)
    for _ in range(5000):
        a, b, c = (-rng.expovariate(1.0) for _ in range(3))
        margin = rng.choice([0.0, 0.05, 0.1, 0.5])
        assert verdict_from_label_logprobs({"A": a, "B": b, "C": c}, margin) == authors_rule(a, b, c, margin)


# ------------------------------------------------------------------------------------------------ settings
def test_the_protocol_is_a_setting_and_claude_keeps_the_letter():
    base = dict(run_dir=str(REPO), data_path=str(REPO / "README.md"))
    assert (EvalArguments(**base).judge_protocol, EvalArguments(**base).judge_tie_margin) == ("letter", 0.1)
    local = EvalArguments(**base, judge_protocol="logprobs", judge_tie_margin=0.05)
    assert (local.judge_protocol, local.judge_tie_margin) == ("logprobs", 0.05)
    with pytest.raises(ValueError, match="Claude does not expose"):
        EvalArguments(**base, judge="claude", judge_protocol="logprobs")
    with pytest.raises(ValueError, match="Unknown --judge_protocol 'probs'; choose one of letter, logprobs"):
        EvalArguments(**base, judge_protocol="probs")
    with pytest.raises(ValueError, match="--judge_tie_margin must be >= 0"):
        EvalArguments(**base, judge_tie_margin=-0.1)


# ------------------------------------------------------------------------------------------------ a served judge
def between(text, label):
    return re.search(rf"\[Response {label}\]\n(.*?)\n\[End of response {label}\]", text, re.S).group(1)


def chosen_logprobs(body):
    """A judge that prefers the shorter response clearly, and cannot separate two of equal length (a 0.05 lead)."""
    text = body["messages"][-1]["content"]
    a, b = len(between(text, "A")), len(between(text, "B"))
    if a == b:
        return [(" A", -0.70), ("B", -0.75), ("C", -3.0), ("The", -4.0)]
    winner, loser = ("A", "B") if a < b else ("B", "A")
    return [(winner, -0.05), ("\n", -3.5), (loser, -4.0), ("C", -6.0)]


def first_letter(body):
    return chosen_logprobs(body)[0][0].strip()


@pytest.fixture
def logprob_server(monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge-test")
    with MessagesServer(reply=first_letter, logprobs=chosen_logprobs) as server:
        yield server


def served(server, protocol, **flags):
    return judges.build_judge(EvalArguments(
        run_dir=str(REPO), data_path=str(REPO / "README.md"), judge="openai", judge_api_base=server.url + "/v1",
        judge_api_model="Qwen/Qwen3-8B", judge_api_max_retries=0, judge_protocol=protocol, **flags))


PAIRS = [
    {"style": STYLE, "persona": STYLE_PERSONAS[STYLE], "prompt": "Fix my bike?", "policy_response": "Pump tyres.",
     "baseline_response": "A much longer text about tyres."},
    {"style": STYLE, "persona": STYLE_PERSONAS[STYLE], "prompt": "Oil?", "policy_response": "Yes, oil it.",
     "baseline_response": "No, skip it."},
]


def test_a_served_judge_reads_the_label_logprobs_the_server_returns(logprob_server):
    records = judging.judge_pairs(served(logprob_server, "logprobs"), PAIRS)
    shorter, even = records
    assert shorter["raw_judgments"] == [{"A": -0.05, "B": -4.0, "C": -6.0}, {"A": -4.0, "B": -0.05, "C": -6.0}]
    assert shorter["verdicts"] == ["A", "B"] and shorter["outcome"] == "win"
    assert even["raw_judgments"][0] == {"A": -0.70, "B": -0.75, "C": -3.0}
    assert even["verdicts"] == ["C", "C"] and even["outcome"] == "tie"  # within the margin both ways
    for logged in logprob_server.requests:
        body = logged.body
        assert (body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (True, 20, 1)
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        assert body["messages"][0] == judge_messages(STYLE_PERSONAS[STYLE], "", "", "")[0]
    # With a margin under the 0.05 lead, the even pair is decided by the first position: A, then B, a tie again.
    wide = judging.judge_pairs(served(logprob_server, "logprobs", judge_tie_margin=0.01), PAIRS[1:])
    assert wide[0]["verdicts"] == ["A", "A"] and wide[0]["outcome"] == "tie"


def test_the_letter_protocol_reads_the_text_of_the_same_server(logprob_server):
    records = judging.judge_pairs(served(logprob_server, "letter"), PAIRS)
    assert [r["raw_judgments"] for r in records] == [["A", "B"], ["A", "A"]]
    assert [r["outcome"] for r in records] == ["win", "tie"]
    for logged in logprob_server.requests:
        assert "logprobs" not in logged.body and logged.body["max_tokens"] == 32


def test_a_server_without_logprobs_is_named_and_failed_requests_are_left_for_a_rerun(monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge-test")
    with MessagesServer(reply=first_letter) as server:
        with pytest.raises(InputError, match="returned no log-probabilities: --judge_protocol logprobs needs a "
                                             "server that answers"):
            served(server, "logprobs").label_logprobs([judge_messages("p", "r", "a", "b")])
    with MessagesServer(reply=first_letter, logprobs=chosen_logprobs) as server:
        server.add_fault(None, "server_error", times=None)
        assert judging.judge_pairs(served(server, "logprobs"), PAIRS[:1]) == []


# ------------------------------------------------------------------------------------------------ a local judge
def independent_label_logprobs(model, tokenizer, messages, labels=("A", "B", "C")):
    """One unpadded forward pass per spelling, the spelling's tokens' log-probs summed; the best spelling per label."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    best = dict.fromkeys(labels, -math.inf)
    for spelling in ("{}", " {}", "\n{}", "\n {}"):
        for label in labels:
            ids = tokenizer.encode(spelling.format(label), add_special_tokens=False)
            with torch.no_grad():
                logps = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].float(), dim=-1)
            score = sum(logps[len(prompt) + j - 1, token].item() for j, token in enumerate(ids))
            best[label] = max(best[label], score)
    return best


def test_a_local_judge_reads_its_logits_as_the_authors_judge_does(tiny_model_dir):
    conversations = [judge_messages(STYLE_PERSONAS[STYLE], "Fix my bike?", "Pump tyres.", "A much longer text."),
                     judge_messages(STYLE_PERSONAS["poetic"], "Hi", "Hello", "Greetings, traveller of the dawn.")]
    chat = ChatModel(tiny_model_dir, "float32")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(label_spellings(tokenizer, "ABC")) == 12
    mine = chat.label_logprobs(conversations, "ABC", batch_size=2, chat_template_kwargs={"enable_thinking": False})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for scores, messages in zip(mine, conversations):
        assert scores == pytest.approx(independent_label_logprobs(model, tokenizer, messages), abs=1e-4)
    judge = judges.build_judge(EvalArguments(run_dir=str(REPO), data_path=str(REPO / "README.md"),
                                             judge_model=tiny_model_dir, judge_protocol="logprobs"), "float32")
    judge._chat = chat  # the model loaded above
    (record,) = judging.judge_pairs(judge, [{**PAIRS[0], "persona": STYLE_PERSONAS[STYLE]}])
    assert record["verdicts"] == [verdict_from_label_logprobs(raw, 0.1) for raw in record["raw_judgments"]]
    assert set(record["raw_judgments"][0]) == {"A", "B", "C"}
