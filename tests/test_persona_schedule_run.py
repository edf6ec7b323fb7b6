"""A two-persona schedule on two processes (torchrun, gloo, CPU) through train.py's real main(): the switch falls
exactly on its step boundary on both ranks, the token log and the user's own calls prove it, and each checkpoint's
run settings say which persona it trained on last and how many interactions each persona had. A run resumed after
the switch continues with the second persona and remakes the same step; that one runs as one process of two answers
a step (the same switch step), since transformers cannot load a CPU optimizer state under torchrun ("don't know how
to restore data location of ... cpu:0"). Entry: tests/persona_schedule_entry.py."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from persona_schedule_entry import persona_reply
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME
from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.run_files import RUN_SETTINGS_NAME
from sdpo_interactions.testing.runs import drop_weights, finish, read_jsonl, start, write_prompts

pytestmark = pytest.mark.slow

ENTRY = Path(__file__).resolve().with_name("persona_schedule_entry.py")
FIRST, SECOND = "concise_casual_beginner", "detailed_professional_expert"
# One answer a process, two processes: 2 interactions a step, so 4 interactions are the first two steps.
SCHEDULE = f"{FIRST}:4,{SECOND}"
SWITCH = 2
STEPS = 4


def style_of(step: int) -> str:
    """The persona of the answers generated with `step` optimizer steps done."""
    return FIRST if step < SWITCH else SECOND


def launch(model: str, prompts: Path, output_dir: Path, record_dir: Path, log: Path, *extra: str, nproc: int = 2):
    """One process of two answers a step, or two of one each: two interactions a step either way."""
    flags = ["--train_jsonl", str(prompts), "--system_prompt", "general", "--model_name_or_path", model,
             "--output_dir", str(output_dir), "--record_dir", str(record_dir), "--max_completion_length", "6",
             "--logging_steps", "1", "--token_log_samples", "64", "--report_to", "none", "--bf16", "false",
             "--gradient_checkpointing", "false", "--use_cpu", "true", "--seed", "3", "--learning_rate", "1e-4",
             "--dataloader_num_workers", "0", "--per_device_train_batch_size", str(2 // nproc),
             "--gradient_accumulation_steps", "1", "--max_steps", str(STEPS), "--save_steps", "3",
             "--lr_scheduler_type", "constant", "--style_schedule", SCHEDULE, *extra]
    if nproc == 1:
        command = [sys.executable, str(ENTRY), *flags]
    else:
        command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", str(ENTRY),
                   *flags]
    process = start(command, log, cwd=ENTRY.parent)
    assert finish(process, log) == 0, log.read_text()[-4000:]
    return log.read_text()


def calls(record_dir: Path, ranks=(0, 1)) -> dict[int, list[dict]]:
    return {rank: read_jsonl(record_dir / f"calls-rank{rank}.jsonl") for rank in ranks}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("persona-schedule")
    prompts = write_prompts(base / "prompts.jsonl")
    out = base / "run"
    first_log = launch(tiny_model_dir, prompts, out, base / "first", base / "first.log")
    first = {"log": first_log, "tokens": read_jsonl(out / TOKEN_LOG_NAME), "calls": calls(base / "first"),
             "settings": {step: json.loads((out / f"checkpoint-{step}" / RUN_SETTINGS_NAME).read_text())
                          for step in (3, 4)}}
    one = base / "one"
    launch(tiny_model_dir, prompts, one, base / "one-records", base / "one.log", nproc=1)
    uninterrupted = read_jsonl(one / TOKEN_LOG_NAME)
    shutil.rmtree(one / "checkpoint-4")
    resumed_log = launch(tiny_model_dir, prompts, one, base / "resumed", base / "resumed.log",
                         "--resume_from_checkpoint", str(one / "checkpoint-3"), nproc=1)
    resumed = {"log": resumed_log, "tokens": read_jsonl(one / TOKEN_LOG_NAME), "calls": calls(base / "resumed", (0,)),
               "uninterrupted": uninterrupted}
    yield first, resumed
    drop_weights(base)


def test_the_switch_falls_on_the_step_boundary_on_both_ranks(runs):
    first, _ = runs
    for rank, made in first["calls"].items():
        assert [c["global_step"] for c in made] == list(range(STEPS)), rank  # one call a step on each rank
        for call in made:
            assert call["style"] == style_of(call["global_step"])
            assert call["persona"] == STYLE_PERSONAS[call["style"]]
    assert f"switch after step {SWITCH}: {FIRST} -> {SECOND}" in first["log"]


def test_the_token_log_carries_the_persona_of_each_reply(runs):
    first, _ = runs
    records = first["tokens"]
    assert sorted(r["step"] for r in records) == [step for step in range(STEPS) for _ in range(2)]
    for record in records:
        assert record["style"] == style_of(record["step"])
        assert record["feedback"] == persona_reply(record["style"], record["prompt"])  # written under that persona


def test_each_checkpoint_records_its_persona_and_the_interactions_of_each(runs):
    first, _ = runs
    for step, seen in ((3, [4, 2]), (4, [4, 4])):
        settings = first["settings"][step]
        schedule = settings["style_schedule"]
        assert schedule["spec"] == SCHEDULE and schedule["interactions_per_step"] == 2
        assert schedule["active_style"] == SECOND == settings["style"]
        assert settings["persona"] == STYLE_PERSONAS[SECOND]
        assert [(p["style"], p["start_step"], p["end_step"], p["interactions_seen"]) for p in schedule["phases"]] \
            == [(FIRST, 0, SWITCH, seen[0]), (SECOND, SWITCH, None, seen[1])]
        assert settings["interactions"]["answers"] == sum(seen)


def test_a_run_resumed_after_the_switch_continues_with_the_second_persona(runs):
    _, resumed = runs
    # A fresh process's user starts as FIRST; the step it resumes at makes it SECOND before it is asked anything.
    assert [(c["global_step"], c["style"]) for c in resumed["calls"][0]] == [(3, SECOND)]
    before = resumed["uninterrupted"]
    assert [r["style"] for r in before] == [style_of(r["step"]) for r in before] and len(before) == 2 * STEPS
    assert resumed["tokens"] == before  # steps 0-2 kept, step 3 remade exactly: same answers, replies and persona
