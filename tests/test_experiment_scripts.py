"""The launchers of the paper's other online experiments: the preference flip (Fig. 4) and the continual run (Fig. 6),
STYLE_SCHEDULE in the online scripts, and the evaluation scripts' oracle and judge-protocol variables. Dry runs only:
what they print (steps, interactions, switch points), what they refuse, and that train.py and evaluate_run.py parse
the commands they print."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trl import TrlParser

REPO = Path(__file__).resolve().parents[1]
VARS = ("STYLE", "STYLE_SCHEDULE", "MODEL_NAME_OR_PATH", "USER_MODEL_NAME_OR_PATH", "LR", "BS", "GA", "WORLD_SIZE",
        "TRAIN_JSONL", "VAL_JSONL", "TRAIN_N", "EVAL_N", "RECIPE", "SAVE_STEPS", "RUN_ID", "OUTPUT_DIR", "SCRATCH",
        "ANTHROPIC_API_KEY", "USER_API_BASE", "USER_API_MODEL", "PERSONA_FILE", "ORACLE", "JUDGE_PROTOCOL",
        "JUDGE_TIE_MARGIN", "JUDGE_API_BASE", "JUDGE_API_MODEL", "RUN_DIR", "DATA_PATH", "CKPTS", "BASELINE")
SAMPLE = {"TRAIN_JSONL": str(REPO / "data/sample/train.jsonl"), "VAL_JSONL": str(REPO / "data/sample/validation.jsonl")}


def run(script, *args, **env):
    base = {k: v for k, v in os.environ.items() if k not in VARS}
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args],
                          env={**base, "PYTHON": sys.executable, **env}, capture_output=True, text=True, timeout=120)


def printed_command(stdout):
    lines = stdout.splitlines()
    return shlex.split(lines[lines.index("command:") + 1])


@pytest.mark.parametrize("script, schedule, lines", [
    ("train_online_sdpo_flip.sh", "concise_casual_beginner:256,detailed_professional_expert", [
        "  512 prompts -> 32 steps an epoch, 32 steps in all (1 epoch), 512 interactions",
        "  checkpoints at steps: 4 8 12 16 20 24 28 32 (every 4 steps and the last step)",
        "  steps 1-16 (interactions 1-256): concise_casual_beginner",
        "  steps 17-32 (interactions 257-512): detailed_professional_expert, to the end of the run",
        "  switch after step 16: concise_casual_beginner -> detailed_professional_expert (checkpoint-16 is the last "
        "one trained on concise_casual_beginner alone)"]),
    ("train_online_sdpo_continual.sh", "no_emojis:512,less_filler_praise_sycophancy:512,less_formatting", [
        "  1536 prompts -> 96 steps an epoch, 96 steps in all (1 epoch), 1536 interactions",
        "  checkpoints at steps: 8 16 24 32 40 48 56 64 72 80 88 96 (every 8 steps and the last step)",
        "  steps 33-64 (interactions 513-1024): less_filler_praise_sycophancy",
        "  switch after step 32: no_emojis -> less_filler_praise_sycophancy (checkpoint-32 is the last one trained "
        "on no_emojis alone)",
        "  switch after step 64: less_filler_praise_sycophancy -> less_formatting (checkpoint-64 is the last one "
        "trained on less_filler_praise_sycophancy alone)"]),
])
def test_the_experiment_scripts_print_steps_interactions_and_switch_points(script, schedule, lines, tmp_path):
    result = run(script, "--dry-run", **SAMPLE, ANTHROPIC_API_KEY="sk-ant-x", OUTPUT_DIR=str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    for line in lines:
        assert line in result.stdout.splitlines()
    assert f"  STYLE_SCHEDULE={schedule}" in result.stdout and "  STYLE=" not in result.stdout
    assert "warning" not in result.stderr  # a checkpoint on every switch, every persona reached
    argv = printed_command(result.stdout)
    assert argv[argv.index("--style_schedule") + 1] == schedule and "--style" not in argv


def test_the_flip_command_parses_with_train_py_as_the_papers_run(tmp_path):
    import sdpo_interactions.cli.train as train

    result = run("train_online_sdpo_flip.sh", "--dry-run", "--", "--use_cpu", "true", **SAMPLE, WORLD_SIZE="1",
                 OUTPUT_DIR=str(tmp_path / "out"))
    script_args, training_args, model_args = TrlParser(train.ARGUMENTS).parse_args_and_config(
        args=printed_command(result.stdout)[2:])
    assert (model_args.model_name_or_path, script_args.user_model_name_or_path) == ("Qwen/Qwen3-4B", "Qwen/Qwen3-4B")
    assert (script_args.style, script_args.style_schedule) == (
        "concise_casual_beginner", "concise_casual_beginner:256,detailed_professional_expert")
    assert (training_args.learning_rate, training_args.per_device_train_batch_size, training_args.save_steps) == (
        5e-6, 4, 4)
    assert script_args.train_n == 512 and script_args.system_prompt == "tldr"


def test_the_continual_run_needs_claude_unless_a_server_plays_the_user(tmp_path):
    missing = run("train_online_sdpo_continual.sh", **SAMPLE, OUTPUT_DIR=str(tmp_path / "out"))
    assert missing.returncode == 1 and "ANTHROPIC_API_KEY is not set" in missing.stderr
    served = run("train_online_sdpo_continual.sh", "--dry-run", **SAMPLE, USER_API_BASE="http://simhost:8000/v1",
                 USER_API_MODEL="Qwen/Qwen3-8B", OUTPUT_DIR=str(tmp_path / "out"))
    argv = printed_command(served.stdout)
    assert argv[argv.index("--user_api_base") + 1] == "http://simhost:8000/v1"


def test_a_schedule_off_a_step_boundary_stops_the_script_naming_the_counts_that_fit(tmp_path):
    result = run("train_online_sdpo_flip.sh", "--dry-run", **SAMPLE, STYLE_SCHEDULE="concise_casual_beginner:250,"
                 "detailed_professional_expert", OUTPUT_DIR=str(tmp_path / "out"))
    assert result.returncode == 1 and "command:" not in result.stdout
    assert "so use 240 (15 steps) or 256 (16 steps)" in result.stderr
    assert "STYLE_SCHEDULE=concise_casual_beginner:250,detailed_professional_expert cannot run" in result.stderr


@pytest.mark.parametrize("script", ["train_online_sdpo_tldr.sh", "train_online_sdpo.sh"])
def test_the_papers_scripts_take_a_schedule_instead_of_a_style(script, tmp_path):
    plain = run(script, "--dry-run", **SAMPLE, ANTHROPIC_API_KEY="k", OUTPUT_DIR=str(tmp_path / "a"))
    assert "--style" in printed_command(plain.stdout) and "persona schedule" not in plain.stdout
    result = run(script, "--dry-run", **SAMPLE, ANTHROPIC_API_KEY="k", OUTPUT_DIR=str(tmp_path / "b"),
                 STYLE_SCHEDULE="poetic:64,no_emojis", TRAIN_N="128")
    assert result.returncode == 0, result.stderr
    argv = printed_command(result.stdout)
    assert argv[argv.index("--style_schedule") + 1] == "poetic:64,no_emojis" and "--style" not in argv
    assert any(line.startswith("  switch after step ") for line in result.stdout.splitlines())
    assert "STYLE_SCHEDULE" in run(script, "--help").stdout


def test_the_recipes_are_the_papers_with_a_checkpoint_on_every_switch():
    for recipe, base, save_steps in (("flip_tldr.yaml", "tldr.yaml", 4), ("continual_helpsteer.yaml",
                                                                         "helpsteer.yaml", 8)):
        mine = yaml.safe_load((REPO / "recipes" / recipe).read_text())
        theirs = yaml.safe_load((REPO / "recipes" / base).read_text())
        assert mine == {**theirs, "save_steps": save_steps}


def test_the_eval_scripts_pass_the_oracle_and_the_protocol(tmp_path):
    from sdpo_interactions.cli.evaluate import EvalArguments

    data = tmp_path / "held_out.jsonl"
    data.write_text('{"prompt": "Hi?"}\n')
    common = dict(RUN_DIR=str(tmp_path), DATA_PATH=str(data), WORLD_SIZE="1")
    default = printed_command(run("eval_checkpoints_tldr.sh", "--dry-run", **common).stdout)
    assert "--oracle" not in default and "--judge_protocol" not in default  # the oracle on, the letter read
    result = run("eval_checkpoints_tldr.sh", "--dry-run", **common, ORACLE="0", JUDGE_PROTOCOL="logprobs",
                 JUDGE_TIE_MARGIN="0.05", JUDGE_API_BASE="http://judgehost:8000/v1", JUDGE_API_MODEL="Qwen/Qwen3-8B")
    assert result.returncode == 0, result.stderr
    (parsed,) = TrlParser((EvalArguments,)).parse_args_and_config(printed_command(result.stdout)[2:])
    assert (parsed.oracle, parsed.judge_protocol, parsed.judge_tie_margin, parsed.judge) == (
        False, "logprobs", 0.05, "openai")
    for bad, message in (({"ORACLE": "yes"}, "ORACLE must be 1"), ({"JUDGE_PROTOCOL": "probs"},
                                                                   "JUDGE_PROTOCOL must be letter or logprobs")):
        refused = run("eval_checkpoints_tldr.sh", "--dry-run", **common, **bad)
        assert refused.returncode == 2 and message in refused.stderr
