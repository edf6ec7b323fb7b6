"""Offline SDPO on logged conversations: pairing, bad input, the loss by hand, and a real run of the tiny random model
(tests/conftest.py) whose per-token signal is recomputed with plain transformers; two processes under torchrun in
the slow tier."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

import sdpo_interactions.cli.train_offline as train_offline
from sdpo_interactions.conversations import (
    check_conversation,
    fit_prompt,
    interaction_samples,
    load_conversation_dataset,
    read_conversations,
    token_limit_problem,
)
from sdpo_interactions.core.maths import first_tokens_mask, signal_weighted_nll
from sdpo_interactions.run_files import RUN_SETTINGS_NAME, BadLinesError
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME
from test_trainer import reference_logps

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "conversations.jsonl"


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATION = [msg("system", "S"), msg("user", "x1"), msg("assistant", "y1"), msg("user", "o1 and x2"),
                msg("assistant", "y2"), msg("user", "o2"), msg("assistant", "y3 never answered")]


def test_each_answer_is_paired_with_the_user_turn_after_it():
    samples = interaction_samples(CONVERSATION)
    assert [(s["completion"], s["feedback"]) for s in samples] == [("y1", "o1 and x2"), ("y2", "o2")]
    assert samples[0]["prompt"] == CONVERSATION[:2]
    # The second sample is multi-turn: its prompt ends with the user turn y2 answers, o1 being that turn.
    assert samples[1]["prompt"] == CONVERSATION[:4] and samples[1]["prompt"][-1]["content"] == "o1 and x2"


@pytest.mark.parametrize(
    "record, message",
    [
        # Messages are named by their position counted from 1, and the count says so: "2 of 2" is the last one.
        ({"messages": [msg("user", "a"), msg("user", "b")]}, "message 2 of 2 is 'user' where 'assistant' was due"),
        ({"messages": [msg("assistant", "a"), msg("user", "b")]}, "message 1 of 2 is 'assistant' where 'user' was due"),
        ({"messages": [msg("system", "s"), msg("user", "q"), msg("user", "b")]}, "message 3 of 3 is 'user'"),
        ({"messages": [msg("system", "s"), msg("user", "only a question")]}, "no assistant turn"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "message 1 of 1 needs a role, one of system, user, "),
        ({"messages": [msg("user", "q"), {"role": "assistant", "content": 3}]}, r"message 2 of 2 \(assistant\) needs a"),
        ({"turns": []}, 'expected an object with a "messages" list'),
    ],
)
def test_bad_conversations_are_refused_with_their_place(record, message):
    with pytest.raises(ValueError, match=message) as err:
        check_conversation(record, "logs.jsonl:7")
    assert str(err.value).startswith("logs.jsonl:7: ")


def test_every_bad_line_in_a_file_is_named_by_file_and_line_at_once(tmp_path):
    path = tmp_path / "logs.jsonl"
    lines = [json.dumps({"messages": CONVERSATION}), "{not json", json.dumps({"messages": CONVERSATION[1:2]}),
             json.dumps({"messages": CONVERSATION}), json.dumps({"turns": []})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadLinesError) as err:
        read_conversations(str(path))
    assert err.value.problems == [f"{path}:2: malformed JSON (Expecting property name enclosed in double quotes, "
                                  "column 2)", f"{path}:3: no assistant turn, so nothing to learn from",
                                  f'{path}:5: expected an object with a "messages" list']
    assert str(err.value).startswith(f"{path}: 3 bad lines (prepare_data.py conversations --source FILE --skip_bad")
    assert err.value.exit_code == 1


def test_sharegpt_and_wildchat_shapes_read_as_messages(tmp_path):
    path = tmp_path / "logs.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
                    + "\n" + json.dumps({"conversation": [msg("user", "q2"), msg("assistant", "a2")]}) + "\n")
    assert [m for _, m in read_conversations(str(path))] == [[msg("user", "q"), msg("assistant", "a")],
                                                             [msg("user", "q2"), msg("assistant", "a2")]]


def test_budgets_drop_early_exchanges_never_the_request_y_or_o():
    long_history = [msg("system", "S")] + [msg(r, "w " * 10) for r in ("user", "assistant") * 3] + [msg("user", "q")]
    count = lambda messages: sum(len(m["content"].split()) for m in messages)  # noqa: E731
    fitted, dropped = fit_prompt(long_history, count, 25)
    assert dropped == 2 and fitted[0] == long_history[0] and fitted[-1] == msg("user", "q")
    assert fit_prompt(long_history, count, 0) == (None, 3)  # even the request alone is over: the sample is dropped
    fitted, dropped = fit_prompt(long_history, count, None, max_messages=3)  # the request and one exchange before it
    assert dropped == 2 and [m["role"] for m in fitted] == ["system", "user", "assistant", "user"]


def test_the_offline_loss_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    advantages = torch.tensor([[0.5, -1.0, 2.0]])
    loss = signal_weighted_nll(logps, advantages)
    assert loss.tolist() == [[0.5, -2.0, 1.0]]  # -A * log p
    loss.sum().backward()
    assert logps.grad.tolist() == [[-0.5, 1.0, -2.0]]  # d/dlogp = -A: the advantage is a constant
    assert first_tokens_mask(torch.ones(2, 4), 2).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_the_shipped_sample_loads_with_counted_filters(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data, counts = load_conversation_dataset(str(SAMPLE), tokenizer, max_samples_per_conversation=1)
    assert counts["conversations"] == 6 and counts["samples"] == 10 and counts["over_cap"] == 4
    assert len(data) == 6 and set(data.column_names) == {"prompt", "completion", "feedback"}
    # "ok now do Macbeth" is the only reply under 6 tokens (4); two answers are over 60 tokens with their EOS.
    _, counts = load_conversation_dataset(str(SAMPLE), tokenizer, token_limits={"feedback": (6, None)})
    assert counts["feedback_too_short"] == 1
    limits = {"completion": (None, 60), "request": (None, None)}
    data, counts = load_conversation_dataset(str(SAMPLE), tokenizer, token_limits=limits)
    assert counts["completion_too_long"] >= 1 and all(len(tokenizer(c)["input_ids"]) < 60 for c in data["completion"])


def test_token_limits_by_hand():
    limits = {"request": (2, None), "completion": (None, 10), "feedback": (1, 5)}
    assert token_limit_problem({"request": 3, "completion": 10, "feedback": 5}, limits) is None
    assert token_limit_problem({"request": 1, "completion": 10, "feedback": 5}, limits) == "request_too_short"
    assert token_limit_problem({"request": 3, "completion": 11, "feedback": 5}, limits) == "completion_too_long"
    assert token_limit_problem({"request": 3, "completion": 1, "feedback": 6}, limits) == "feedback_too_long"


@pytest.fixture(scope="module")
def offline_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline")
    args = TrlParser(train_offline.ARGUMENTS).parse_args_and_config(
        offline_flags(tiny_model_dir, out))
    train_offline.main(*args)
    return out


def test_offline_run_writes_checkpoints_settings_and_a_token_log(offline_run):
    settings = json.loads((offline_run / "checkpoint-2" / RUN_SETTINGS_NAME).read_text())
    assert settings["mode"] == "offline" and settings["advantage_baseline"] == "none"
    assert settings["interactions"] == {"answers": 4, "with_feedback": 4}
    assert settings["data_filters"]["max_history_messages"] == 5  # what chose the samples, beside their counts
    assert set(settings["data_filters"]) == set(train_offline.DATA_FILTERS) and settings["data_counts"]
    records = [json.loads(line) for line in (offline_run / TOKEN_LOG_NAME).read_text().splitlines()]
    assert len(records) == 4
    conversations = [m for _, m in read_conversations(str(SAMPLE))]
    pairs = {(s["completion"], s["feedback"]) for c in conversations for s in interaction_samples(c)}
    for record in records:
        assert (record["completion"], record["feedback"]) in pairs  # o is exactly the turn after y
        assert record["feedback"] in record["teacher_context"] and record["feedback"] not in record["student_context"]


def test_offline_signal_equals_plain_transformers(offline_run, tiny_model_dir):
    """Step-0 records were scored with the initial weights: recompute both passes independently."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [json.loads(line) for line in (offline_run / TOKEN_LOG_NAME).read_text().splitlines()]
    for record in [r for r in records if r["step"] == 0]:
        ids = record["completion_ids"]
        assert ids == tokenizer(record["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        student = reference_logps(model, tokenizer, record["student_context"], ids)
        teacher = reference_logps(model, tokenizer, record["teacher_context"], ids)
        assert record["signal"] == pytest.approx([t - s for t, s in zip(teacher, student)], abs=3e-3)


def offline_flags(model_dir, output_dir, *extra):
    return ["--train_jsonl", str(SAMPLE), "--model_name_or_path", model_dir, "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "2", "--max_steps", "2", "--save_steps", "1", "--learning_rate", "1e-4",
            "--max_prompt_length", "512", "--max_completion_length", "128", "--token_log_samples", "2",
            "--logging_steps", "1", "--report_to", "none", "--bf16", "false", "--seed", "5", *extra]


def test_a_resumed_offline_run_ends_where_the_uninterrupted_one_did(offline_run, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    resumed = tmp_path / "resumed"
    shutil.copytree(offline_run / "checkpoint-1", resumed / "checkpoint-1")
    parser = TrlParser(train_offline.ARGUMENTS)
    train_offline.main(*parser.parse_args_and_config(
        offline_flags(tiny_model_dir, resumed, "--resume_from_checkpoint", "last")))
    expected, got = load_file(offline_run / "checkpoint-2" / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # no sampling offline: bit for bit


@pytest.mark.slow
def test_two_processes_split_the_samples_and_keep_each_reply_with_its_answer(tiny_model_dir, tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--standalone", "--nproc_per_node=2", str(REPO / "train_offline.py"),
               *offline_flags(tiny_model_dir, tmp_path / "two", "--per_device_train_batch_size", "1", "--max_steps", "1",
                              "--save_strategy", "no")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    settings = json.loads((tmp_path / "two" / RUN_SETTINGS_NAME).read_text())
    assert settings["interactions"] == {"answers": 2, "with_feedback": 2}  # kept current: the one step's two samples
    records = [json.loads(line) for line in (tmp_path / "two" / TOKEN_LOG_NAME).read_text().splitlines()]
    assert len(records) == 2 and records[0]["completion"] != records[1]["completion"]  # one sample from each rank
    conversations = [m for _, m in read_conversations(str(SAMPLE))]
    pairs = {(s["completion"], s["feedback"]) for c in conversations for s in interaction_samples(c)}
    assert all((r["completion"], r["feedback"]) in pairs for r in records)


def test_truncated_answers_and_replies_that_are_no_reaction_are_left_out(model_dir, tmp_path):
    logs = tmp_path / "logs.jsonl"
    conversation = [msg("user", "Explain DNS."), {**msg("assistant", "DNS maps names to"), "finish_reason": "length"},
                    msg("user", "You got cut off."), msg("assistant", "DNS maps names to addresses."),
                    {**msg("user", "Unrelated: what is 2+2?"), "reaction": False}, msg("assistant", "4."),
                    msg("user", "Thanks, that was clear.")]
    logs.write_text(json.dumps({"messages": conversation}) + "\n")
    data, counts = load_conversation_dataset(str(logs), AutoTokenizer.from_pretrained(model_dir))
    assert counts["truncated_answer"] == 1 and counts["not_a_reaction"] == 1
    assert list(data["completion"]) == ["4."] and list(data["feedback"]) == ["Thanks, that was clear."]
    with pytest.raises(ValueError, match="'reaction' must be true or false"):
        check_conversation({"messages": [msg("user", "q"), msg("assistant", "a"), {**msg("user", "o"), "reaction": 1}]},
                           "logs.jsonl:1")


@pytest.mark.slow
def test_the_offline_script_trains_on_a_cpu_with_its_recipe(tiny_model_dir, tmp_path):
    """Issue 21: scripts/train_offline_sdpo.sh with recipes/offline.yaml stopped on a CPU ("Your setup doesn't support
    bf16/gpu"). Now the recipe's bf16 turns off there (logged) and its optimizer, torchao's AdamW8bit with stochastic
    rounding on bf16 weights, trains."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "PYTHON": sys.executable,
           "WORLD_SIZE": "1", "MODEL_NAME_OR_PATH": tiny_model_dir, "TRAIN_JSONL": str(SAMPLE), "BS": "2", "GA": "1",
           "OUTPUT_DIR": str(tmp_path / "run"), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "train_offline_sdpo.sh"), "--", "--max_steps", "2",
                           "--save_steps", "2", "--report_to", "none", "--max_completion_length", "32"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "No GPU: bf16 is off" in proc.stderr
    settings = json.loads((tmp_path / "run" / "checkpoint-2" / RUN_SETTINGS_NAME).read_text())
    assert settings["global_step"] == 2 and settings["interactions"]["answers"] == 4
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2]  # the first and the last step, whatever logging_steps
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"  # the recipe's bf16 weights, as trained
