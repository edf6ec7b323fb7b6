"""The step schedule (sdpo_interactions.schedule): cases worked out by hand from TRL's and the Trainer's rules, its
rules checked against GRPOConfig's own derivation, its command line (recipe under flags, torch-free, one-line
errors), and, on real runs, the steps, checkpoints and interactions the Trainer actually made."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdpo_interactions.schedule import (DEFAULTS, ScheduleError, compute_schedule, describe, generation_batch,
                                        warnings_for)

REPO = Path(__file__).resolve().parents[1]
TLDR = dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, world_size=4)  # the paper's TL;DR run


def plan(samples, **settings):
    return compute_schedule(samples=samples, **{"num_train_epochs": 1.0, **settings})


# ------------------------------------------------------------------------------------------------ by hand
def test_the_papers_tldr_run():
    # 2 x 4 x 4 = 32 answers a step, one per prompt: 256 // 32 = 8 steps, a checkpoint every 3 and at the end.
    s = plan(256, **TLDR, save_steps=3)
    assert (s.answers_per_step, s.samples_per_generation, s.steps_per_epoch, s.steps) == (32, 32, 8, 8)
    assert (s.interactions, s.checkpoints, s.unused_per_epoch) == (256, (3, 6, 8), 0)


def test_two_answers_per_prompt_halve_the_prompts_a_step_and_double_the_steps():
    # 32 answers a step are 16 prompts x 2: 256 prompts make 16 steps and 512 interactions (the bash formula said 8).
    s = plan(256, **TLDR, num_generations=2, save_steps=3)
    assert (s.samples_per_generation, s.steps, s.interactions) == (16, 16, 512)
    assert s.checkpoints == (3, 6, 9, 12, 15, 16)


def test_two_epochs_and_an_incomplete_generation_batch():
    # BS 4 x WS 2 = 8 a generation batch: 100 prompts give 12 whole batches (4 left out) an epoch, two epochs 24 steps.
    s = plan(100, per_device_train_batch_size=4, gradient_accumulation_steps=1, world_size=2, num_train_epochs=2,
             save_steps=10)
    assert (s.steps_per_epoch, s.steps, s.epochs, s.interactions, s.unused_per_epoch) == (12, 24, 2.0, 192, 4)
    assert s.checkpoints == (10, 20, 24)
    assert "each epoch leaves 4 samples out" in " ".join(describe(s))
    assert plan(256, **TLDR, num_train_epochs=1.5).steps == 12  # ceil(1.5 x 8)


def test_max_steps_wins_over_epochs_within_and_across_epochs():
    s = plan(256, **TLDR, num_train_epochs=3, max_steps=5, save_steps=3)
    assert (s.steps, s.interactions, s.checkpoints) == (5, 5 * 32, (3, 5))
    # 10 prompts, 2 a generation batch (BS 2 x GA 2 = 4 answers, 2 each): 5 steps an epoch; 7 steps are one whole
    # epoch (5 batches) and 2 steps of the next (2 more), 7 x 4 = 28 interactions.
    s = plan(10, per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1, num_generations=2,
             max_steps=7, save_steps=3)
    assert (s.steps_per_epoch, s.steps, s.interactions, s.checkpoints) == (5, 7, 28, (3, 6, 7))


def test_a_generation_batch_longer_than_a_step():
    # steps_per_generation 4 with GA 2: one batch of 8 answers is generated for every two steps.
    by_steps = plan(64, per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1,
                    steps_per_generation=4)
    by_size = plan(64, per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1,
                   generation_batch_size=8)
    assert by_steps == by_size
    assert (by_steps.steps_per_epoch, by_steps.interactions) == (16, 64)
    # Stopped after 3 steps, the second batch was generated (and replied to) though only half of it trained.
    stopped = plan(64, per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1,
                   steps_per_generation=4, max_steps=3)
    assert (stopped.steps, stopped.interactions) == (3, 16)


def test_num_iterations_trains_each_answer_again_without_asking_the_user_again():
    # 16 prompts, 4 a batch, each batch used for 2 x 2 micro-batches of 2: 8 steps, still 16 interactions.
    s = plan(16, per_device_train_batch_size=2, gradient_accumulation_steps=2, world_size=1, num_iterations=2)
    assert (s.steps, s.interactions, s.answers_per_step) == (8, 16, 4)
    assert "trained on 2 times" in describe(s)[0]


def test_checkpoint_strategies():
    base = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, world_size=2, num_train_epochs=2)
    assert plan(100, **base, save_steps=0.25).checkpoints == (6, 12, 18, 24)  # a share of 24 steps: every 6
    assert plan(80, **base, save_steps=0.25).checkpoints == (5, 10, 15, 20)
    assert plan(100, **base, save_strategy="epoch").checkpoints == (12, 24)
    assert plan(100, **base, save_strategy="epoch", max_steps=30).checkpoints == (12, 24, 30)
    assert plan(100, **base, save_strategy="no").checkpoints == ()
    assert plan(100, **base, save_strategy="best").checkpoints is None


def test_fewer_samples_than_a_generation_batch_train_nothing_and_say_so():
    s = plan(31, **TLDR)
    assert (s.steps, s.interactions, s.checkpoints) == (0, 0, ())
    assert warnings_for(s, "prompts") == ["31 prompts are less than one generation batch of 32: nothing would train"]
    assert warnings_for(plan(32, **TLDR)) == []


def test_bad_settings_are_all_reported_at_once():
    with pytest.raises(ScheduleError) as err:
        plan(10, per_device_train_batch_size=0, gradient_accumulation_steps=-1, world_size=1, save_strategy="often")
    assert all(word in str(err.value) for word in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                   "save_strategy must be one of no, steps, epoch, best"))


# ------------------------------------------------------------------------------------------------ against TRL's rules
@pytest.mark.parametrize("settings", [
    dict(per_device_train_batch_size=2, gradient_accumulation_steps=4),
    dict(per_device_train_batch_size=2, gradient_accumulation_steps=4, num_generations=2),
    dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, steps_per_generation=3),
    dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, generation_batch_size=6, num_generations=3),
    dict(per_device_train_batch_size=3, gradient_accumulation_steps=1, num_generations=2),
    dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, generation_batch_size=5),
    dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, generation_batch_size=4,
         steps_per_generation=2),
])
def test_generation_batches_follow_grpo_config(settings, tmp_path):
    from sdpo_interactions.core.trainer import OnlineSDPOConfig

    try:
        config = OnlineSDPOConfig(output_dir=str(tmp_path), report_to=[], **settings)
    except ValueError:
        with pytest.raises(ScheduleError):
            generation_batch(world_size=1, **{"num_generations": 1, **settings})
        return
    assert generation_batch(world_size=1, **{"num_generations": 1, **settings}) == (
        config.steps_per_generation, config.generation_batch_size)


def test_defaults_are_the_configs_defaults():
    from sdpo_interactions.core.offline import OfflineSDPOConfig
    from sdpo_interactions.core.trainer import OnlineSDPOConfig

    for config in (OnlineSDPOConfig, OfflineSDPOConfig):
        fields = {f.name: f.default for f in dataclasses.fields(config)}
        assert {name: getattr(fields[name], "value", fields[name]) for name in DEFAULTS} == DEFAULTS


# ------------------------------------------------------------------------------------------------ command line
def schedule_command(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sdpo_interactions.schedule", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_command_reads_the_recipe_under_the_flags_and_ignores_other_flags(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"num_train_epochs": 2, "save_steps": 3, "num_generations": 4, "bf16": True}))
    # recipe: 2 epochs, save_steps 3, 4 answers a prompt; flags: 2 answers a prompt, a checkpoint every 5 steps.
    proc = schedule_command("--config", recipe, "--train_n", 40, "--per_device_train_batch_size", 2,
                            "--gradient_accumulation_steps", 2, "--world_size", 2, "--samples_name", "prompts",
                            "--learning_rate", "1e-5", "--num-generations=2", "--save_steps", 5, "--bf16", "false")
    assert proc.returncode == 0, proc.stderr
    # 8 answers a step = 4 prompts x 2: 10 steps an epoch, 20 in all, 160 interactions.
    assert proc.stdout.splitlines() == [
        "schedule: 8 interactions a step (2 answers a process x 2 accumulation steps x 2 processes, 2 per prompt, "
        "one user reply each)",
        "  40 prompts -> 10 steps an epoch, 20 steps in all (2 epochs), 160 interactions",
        "  checkpoints at steps: 5 10 15 20 (every 5 steps and the last step)",
    ]
    proc = schedule_command("--config", recipe, "--per_device_train_batch_size", 2, "--num_generations", 2)
    assert "the number of samples is known once the data is loaded" in proc.stdout and proc.returncode == 0


def test_command_errors_are_one_line_with_status_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("save_steps: often\nnum_generations: [2]\n")
    proc = schedule_command("--config", recipe, "--train_n", 4)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert f"{recipe}: save_steps: expected float" in proc.stderr and "num_generations: expected int" in proc.stderr
    for args in (["--config", tmp_path / "missing.yaml"], ["--max_steps", "many"],
                 ["--steps_per_generation", 2, "--generation_batch_size", 8]):
        proc = schedule_command(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, args
    proc = schedule_command("--train_n", 3, "--per_device_train_batch_size", 4)
    assert proc.returncode == 0 and "warning: 3 samples are less than one generation batch" in proc.stderr


def test_command_loads_no_torch():
    code = "import sys, sdpo_interactions.schedule as s; s.main(['--train_n', '8']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1] == "False", out.stderr


# ------------------------------------------------------------------------------------------------ real runs
def saved_steps(run_dir: Path) -> tuple[int, ...]:
    return tuple(sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*")))


@pytest.mark.slow
def test_offline_run_makes_the_steps_checkpoints_and_interactions_it_logged(tiny_model_dir, tmp_path, caplog):
    """max_steps across an epoch, a generation batch shorter than a step; then the demo's summary of the run."""
    from trl import TrlParser

    import sdpo_interactions.cli.train_offline as train_offline

    run_dir = tmp_path / "run"
    args = ["--train_jsonl", str(REPO / "data/sample/conversations.jsonl"), "--model_name_or_path", tiny_model_dir,
            "--output_dir", str(run_dir), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--steps_per_generation", "1", "--max_steps", "5", "--save_steps", "2", "--max_completion_length", "512",
            "--logging_steps", "1", "--token_log_samples", "2", "--report_to", "none", "--bf16", "false",
            "--gradient_checkpointing", "false", "--model_init_kwargs", '{"dtype": "float32"}']
    caplog.set_level("INFO")
    script_args, config, model_args = TrlParser(train_offline.ARGUMENTS).parse_args_and_config(args=args)
    train_offline.main(script_args, config, model_args)

    samples = int(next(r.args[0] for r in caplog.records if r.msg.startswith("Training samples: ")))
    expected = compute_schedule(samples=samples, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                world_size=1, steps_per_generation=1, max_steps=5, save_steps=2)
    assert expected.steps_per_epoch < expected.steps  # the run crossed an epoch
    assert [r.message for r in caplog.records if r.name == "sdpo_interactions.schedule"] == describe(expected,
                                                                                                     "samples")
    state = json.loads((run_dir / "trainer_state.json").read_text())
    last = json.loads((run_dir / f"checkpoint-{expected.steps}" / "sdpo_run_settings.json").read_text())
    assert (state["global_step"], saved_steps(run_dir)) == (expected.steps, expected.checkpoints)
    assert last["interactions"]["answers"] == expected.interactions

    report = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_report.py"), str(run_dir)],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    records = [json.loads(line) for line in (run_dir / "token_logps.jsonl").read_text().splitlines()]
    last_step = max(r["step"] for r in records)
    first = next(r for r in records if r["step"] == last_step)
    assert f"The logged answers and the user's real next messages (step {last_step}):" in report.stdout
    assert f"logged answer: {first['completion'][:100]!r}" in report.stdout
    assert f"user's reply:  {first['feedback'][:100]!r}" in report.stdout
    assert "simulated user" not in report.stdout and "Mean token signal per step:" in report.stdout


@pytest.mark.slow
def test_the_script_prints_the_schedule_the_run_logs_and_makes(tiny_model_dir, tmp_path):
    """Two answers a prompt and two epochs through train_online_sdpo_tldr.sh: the dry run's schedule is the one the
    run logs at its start and the one the Trainer makes; wandb writes into the run folder, not the current one."""
    recipe = tmp_path / "cpu.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "recipes" / "tldr.yaml").read_text()),
                                      "bf16": False, "optim": "adamw_torch", "gradient_checkpointing": False,
                                      "model_init_kwargs": {"dtype": "float32"}, "num_train_epochs": 2}))
    run_dir = tmp_path / "run"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ANTHROPIC_"))},
           "PYTHON": sys.executable, "WORLD_SIZE": "1", "TRAIN_N": "6", "BS": "2", "GA": "2",
           "SAVE_STEPS": "2", "RECIPE": str(recipe), "MODEL_NAME_OR_PATH": tiny_model_dir,
           "USER_MODEL_NAME_OR_PATH": tiny_model_dir, "MAX_PROMPT_TOKENS": "384", "OUTPUT_DIR": str(run_dir),
           "TRAIN_JSONL": str(REPO / "data/sample/train.jsonl"), "VAL_JSONL": str(REPO / "data/sample/validation.jsonl")}
    passthrough = ["--", "--num_generations", "2", "--max_completion_length", "4", "--user_max_new_tokens", "4",
                   "--token_log_samples", "0"]

    def script(*args):
        return subprocess.run(["bash", str(REPO / "scripts" / "train_online_sdpo_tldr.sh"), *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=900)

    plan = script("--dry-run", *passthrough)
    assert plan.returncode == 0, plan.stderr
    printed = [line for line in plan.stdout.splitlines() if line.startswith(("schedule:", "  6 prompts", "  checkp"))]
    # 2 x 2 = 4 answers a step, 2 prompts x 2: 3 steps an epoch, 6 in all, 24 interactions
    assert printed[1:] == ["  6 prompts -> 3 steps an epoch, 6 steps in all (2 epochs), 24 interactions",
                           "  checkpoints at steps: 2 4 6 (every 2 steps and the last step)"]

    trained = script(*passthrough)
    assert trained.returncode == 0, trained.stderr[-3000:]
    logged = [line.split("sdpo_interactions.schedule: ", 1)[1] for line in trained.stderr.splitlines()
              if "sdpo_interactions.schedule: " in line]
    assert logged == printed
    state = json.loads((run_dir / "trainer_state.json").read_text())
    settings = json.loads((run_dir / "checkpoint-6" / "sdpo_run_settings.json").read_text())
    assert (state["global_step"], saved_steps(run_dir), settings["interactions"]["answers"]) == (6, (2, 4, 6), 24)
    # No WANDB_API_KEY: offline, and the hint names where the files really are.
    hint = next(line for line in trained.stdout.splitlines() if "upload later with: wandb sync " in line)
    assert hint.endswith(f"wandb sync {run_dir}/wandb/offline-run-*)")
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1 and not (tmp_path / "wandb").exists()
