"""Stop a real run with SIGTERM, resume it with `--resume_from_checkpoint last`, and compare it with a run that
was never stopped; then check that no file a run writes holds a secret of its environment.

Generation samples at temperature 1 (TRL's default), so the resumed run must restore the RNG, the data order, the
optimizer and the scheduler to reproduce the uninterrupted run. Six prompts and two samples a step make an epoch
of three steps, so the stop (after step 4) and the resume fall inside the second epoch, whose order must be the
one the uninterrupted run drew after the first.

The weights are compared bit for bit: both runs execute the same float32 CPU kernels with one thread each, in the
same order, so any difference means some state was not restored.
"""

import json
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from sdpo_interactions.testing.messages_server import MessagesServer
from safetensors.torch import load_file
from sdpo_entry import MODEL_DIR, ROOT, common_flags, launch, signal_when_ready
from sdpo_interactions.testing.runs import SECRETS, drop_weights, finish, read_jsonl, start, subprocess_env, write_prompts

from sdpo_interactions.run_files import RUN_SETTINGS_NAME, latest_complete_checkpoint
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME

# Real train.py processes (torchrun, SIGTERM, resume): the second tier.
pytestmark = pytest.mark.slow

MAX_STEPS = 5
STOP_AFTER = 4  # the signal arrives during this step; the run ends after it with a checkpoint
TRAIN = ["--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "2",
         "--gradient_accumulation_steps", "1", "--save_strategy", "no"]
CHECKPOINT_FILES = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                    "training_args.bin", RUN_SETTINGS_NAME}


def claude_run(base: Path, prompts: Path, server: MessagesServer):
    """The real train.py with the Claude user (a local Messages server) and the secrets in its environment."""
    command = [
        sys.executable, str(ROOT / "train.py"), "--train_jsonl", str(prompts),
        "--train_n", "2", "--system_prompt", "general", "--model_name_or_path", str(MODEL_DIR),
        "--output_dir", str(base / "claude"), "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--max_completion_length", "4", "--save_steps", "1", "--logging_steps", "1", "--report_to", "none",
        "--bf16", "false", "--use_cpu", "true", "--user_max_new_tokens", "16", "--user_api_max_retries", "0",
    ]
    return start(command, base / "claude.log", env=dict(subprocess_env(), ANTHROPIC_BASE_URL=server.url))


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    prompts = write_prompts(base / "prompts.jsonl")
    straight = launch(common_flags(prompts, base / "straight", base / "straight-records") + TRAIN,
                      base / "straight.log")
    stopped = launch(
        common_flags(prompts, base / "run", base / "first-records") + TRAIN
        + ["--wait_for_signal_after_step", str(STOP_AFTER - 1)],
        base / "first.log",
    )
    signal_when_ready(base / "first-records", stopped, base / "first.log")
    stop_code = finish(stopped, base / "first.log")
    after_stop = {
        "latest": latest_complete_checkpoint(base / "run"),
        "checkpoints": sorted(p.name for p in (base / "run").glob("checkpoint-*")),
        "token_log": read_jsonl(base / "run" / TOKEN_LOG_NAME),
        "settings": json.loads((base / "run" / RUN_SETTINGS_NAME).read_text()),
    }
    # A later save cut short by a kill: a folder with some of a checkpoint's files. `last` must pass over it.
    partial = base / "run" / f"checkpoint-{MAX_STEPS + 5}"
    partial.mkdir()
    (partial / "config.json").write_text((base / "run" / f"checkpoint-{STOP_AFTER}" / "config.json").read_text())

    resumed = launch(
        common_flags(prompts, base / "run", base / "resume-records") + TRAIN + ["--resume_from_checkpoint", "last"],
        base / "resume.log",
    )
    with MessagesServer(reply=lambda body: "Way too long, just give me the gist.") as server:
        claude = claude_run(base, prompts, server)
        for process, log in ((straight, "straight.log"), (resumed, "resume.log"), (claude, "claude.log")):
            assert finish(process, base / log) == 0, (base / log).read_text()[-4000:]
        sent_key = [SECRETS["ANTHROPIC_API_KEY"] in " ".join(r.headers.values()) for r in server.requests]
    yield dict(base=base, stop_code=stop_code, after_stop=after_stop, sent_key=sent_key,
               stopped_log=(base / "first.log").read_text())
    drop_weights(base)


def test_sigterm_ends_the_run_after_the_step_with_a_complete_checkpoint(runs):
    assert runs["stop_code"] == 128 + signal.SIGTERM, runs["stopped_log"][-3000:]
    after = runs["after_stop"]
    checkpoint = runs["base"] / "run" / f"checkpoint-{STOP_AFTER}"
    assert after["checkpoints"] == [checkpoint.name]  # save_strategy=no: the stop's own checkpoint only
    assert after["latest"] == str(checkpoint)
    assert CHECKPOINT_FILES <= {p.name for p in checkpoint.iterdir()}
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == STOP_AFTER
    assert sorted({r["step"] for r in after["token_log"]}) == list(range(STOP_AFTER))
    # The run folder's own settings say where the run stopped (they said step 0, no interactions: issue 22).
    assert after["settings"]["global_step"] == STOP_AFTER
    assert after["settings"]["interactions"]["answers"] == 2 * STOP_AFTER


def test_resume_continues_from_the_newest_complete_checkpoint(runs):
    base = runs["base"]
    (call,) = read_jsonl(base / "resume-records" / "simulator-rank0.jsonl")  # only the steps left were run
    assert call["call"] == 0
    state = json.loads((base / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    settings = json.loads((base / "run" / RUN_SETTINGS_NAME).read_text())  # after the resume, the finished run's
    assert settings["global_step"] == MAX_STEPS and settings["interactions"]["answers"] == 2 * MAX_STEPS
    logged_steps = [e["step"] for e in state["log_history"] if "grad_norm" in e]
    assert logged_steps == list(range(1, MAX_STEPS + 1))
    straight = json.loads((base / "straight" / "trainer_state.json").read_text())
    for a, b in zip(state["log_history"], straight["log_history"]):
        if "grad_norm" in a:
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
            assert a["learning_rate"] == b["learning_rate"]  # the scheduler continued, not restarted


def test_resumed_token_log_has_every_step_once(runs):
    records = read_jsonl(runs["base"] / "run" / TOKEN_LOG_NAME)
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)
    keys = [(r["step"], r["prompt"]) for r in records]
    assert len(keys) == len(set(keys))
    assert Counter(steps) == Counter({step: 2 for step in range(MAX_STEPS)})


def test_resumed_run_equals_the_uninterrupted_run(runs):
    base = runs["base"]
    resumed = read_jsonl(base / "run" / TOKEN_LOG_NAME)
    straight = read_jsonl(base / "straight" / TOKEN_LOG_NAME)
    assert [(r["step"], r["prompt"], r["completion_ids"]) for r in resumed] == [
        (r["step"], r["prompt"], r["completion_ids"]) for r in straight
    ]  # the same data order and, sampling at temperature 1, the same RNG stream
    a, b = load_file(base / "run" / "model.safetensors"), load_file(base / "straight" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different[:5]


def test_no_secret_in_any_file_a_run_writes(runs):
    assert runs["sent_key"] and all(runs["sent_key"])  # the Claude run really held the key and used it
    base = runs["base"]
    files = [p for d in ("claude", "run", "straight") for p in (base / d).rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == RUN_SETTINGS_NAME for p in files)
    markers = [value.encode() for value in SECRETS.values()]
    leaks = []
    for path in files:
        data = path.read_bytes()
        leaks += [(str(path), m.decode()) for m in markers if m in data]
    assert not leaks


def test_checkpoint_settings_describe_the_run_without_secrets(runs):
    (checkpoint,) = (runs["base"] / "claude").glob("checkpoint-*")
    settings = json.loads((checkpoint / RUN_SETTINGS_NAME).read_text())
    assert settings["style"] == "concise_casual_beginner" and settings["system_prompt_name"] == "general"
    assert "{feedback}" in settings["hindsight_template"]
    assert settings["user_simulator"]["class"] == "ClaudeStyleUserSimulator"
    assert settings["model_name_or_path"] == str(MODEL_DIR)
