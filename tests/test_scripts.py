"""The shell scripts in scripts/: dry runs (defaults and every override visible in the printed command), the
launcher choice, quoting of awkward paths, secrets, usage errors, missing inputs, the recipes they pass, the
printed schedule and where wandb writes.

Nothing here trains: dry runs execute nothing, and the real-run checks point PYTHON / `accelerate` at a small
recorder program that writes down the argv and environment it was started with (and runs the schedule printout,
`python -m sdpo_interactions.schedule`, for real)."""

import dataclasses
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TRAIN_PY = str(REPO / "train.py")

# Variables the scripts read; removed from the test process's environment so each test states what it sets.
SCRIPT_VARS = [
    "MODEL_NAME_OR_PATH", "USER_MODEL_NAME_OR_PATH", "STYLE", "LR", "BS", "GA", "WORLD_SIZE", "ACCELERATE_CONFIG",
    "TRAIN_JSONL", "VAL_JSONL", "TRAIN_N", "EVAL_N", "SEED", "MAX_PROMPT_TOKENS", "SYSTEM_PROMPT", "RECIPE",
    "RUN_ID", "OUTPUT_DIR", "SCRATCH", "RESUME_FROM_CHECKPOINT", "WANDB_PROJECT", "WANDB_NAME", "WANDB_MODE",
    "WANDB_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "CLAUDE_MODEL", "PYTHON", "OUT_DIR", "DATA_SOURCE",
    "USER_API_BASE", "USER_API_MODEL", "USER_API_KEY", "USER_GPUS", "USER_TP", "HOST", "PORT", "USER_MAX_MODEL_LEN",
    "USER_GPU_MEMORY_UTILIZATION", "HEALTH_TIMEOUT", "VLLM", "CUDA_VISIBLE_DEVICES", "NUM_MACHINES", "MACHINE_RANK",
    "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT", "USE_VLLM", "VLLM_TP", "VLLM_GPU_MEMORY_UTILIZATION", "VLLM_SERVER_URL",
    "VLLM_GPUS", "VLLM_MAX_MODEL_LEN", "TRL", "WANDB_DIR",
]
TRAINING = {
    "tldr": dict(script="train_online_sdpo_tldr.sh", recipe="recipes/tldr.yaml", runs="sdpo-tldr-runs",
                 prepare="scripts/prepare_data_tldr.sh", bs="2", ga="4", train_n="256", max_prompt_tokens="512",
                 system_prompt="tldr", project="sdpo-tldr"),
    "helpsteer": dict(script="train_online_sdpo.sh", recipe="recipes/helpsteer.yaml", runs="sdpo-runs",
                      prepare="scripts/prepare_data_helpsteer.sh", bs="4", ga="1", train_n="512",
                      max_prompt_tokens="512", system_prompt="general", project="sdpo-helpsteer2"),
}
PREPARE = {"tldr": ("prepare_data_tldr.sh", "data/tldr_prompts_unique"),
           "helpsteer": ("prepare_data_helpsteer.sh", "data/helpsteer2_prompts"),
           "wildchat": ("prepare_data_wildchat.sh", "data/wildchat_conversations"),
           "wildfeedback": ("prepare_data_wildfeedback.sh", "data/wildfeedback_conversations")}
ALL_SCRIPTS = [TRAINING[e]["script"] for e in TRAINING] + [PREPARE[e][0] for e in PREPARE] + ["serve_user_simulator.sh"]
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-MARKER-a1b2c3", "WANDB_API_KEY": "wandb-MARKER-d4e5f6",
           "HF_TOKEN": "hf_MARKER_g7h8i9"}

RECORDER = f"""#!{sys.executable}
import json, os, sys
if sys.argv[1:3] in (["-m", "sdpo_interactions.schedule"], ["-m", "sdpo_interactions.precision_plan"]):
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
with open(os.environ["RECORD_TO"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_PROJECT",
                                                                           "WANDB_DIR")}}}}, f)
"""
# The python the scripts print the schedule with: this one, which has the package (a bare `python` may not).
WITH_PACKAGE = {"PYTHON": sys.executable}


def run(script, *args, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env={**base, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def printed_command(stdout):
    """The argv of the line after "command:", split the way a shell would read it."""
    lines = stdout.splitlines()
    return shlex.split(lines[lines.index("command:") + 1])


def flags(argv):
    """--flag value pairs after the program (train.py or prepare_data.py); a flag given twice keeps the last."""
    start = next(i for i, a in enumerate(argv) if a.endswith(".py")) + 1
    out, i = {}, start
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[argv[i]] = argv[i + 1]
            i += 2
        else:
            out[argv[i]] = True
            i += 1
    return out


def exported(stdout):
    return dict(shlex.split(line.strip())[1].split("=", 1) for line in stdout.splitlines()
                if line.startswith("  export "))


@pytest.fixture
def data_files(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text('{"prompt": "A post.\\nTL;DR:"}\n', encoding="utf-8")
    return {"TRAIN_JSONL": str(folder / "train.jsonl"), "VAL_JSONL": str(folder / "validation.jsonl")}


@pytest.fixture
def recorder(tmp_path):
    """A fake `python` (returned) and `accelerate` (on the returned PATH) that record how they were started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("fake-python", "accelerate"):
        path = bin_dir / name
        path.write_text(RECORDER)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "record.json"
    env = {"PYTHON": str(bin_dir / "fake-python"), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "RECORD_TO": str(record)}
    return env, record


# ------------------------------------------------------------------------------------------------ training scripts
@pytest.mark.parametrize("experiment", list(TRAINING))
def test_training_dry_run_defaults(experiment, tmp_path):
    spec = TRAINING[experiment]
    proc = run(spec["script"], "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = printed_command(proc.stdout)
    assert argv[:5] == ["accelerate", "launch", "--num_processes", "4", TRAIN_PY]
    f = flags(argv)
    run_id = re.fullmatch(rf"{experiment}-concise_casual_beginner-\d{{8}}-\d{{6}}", f["--run_name"])
    assert run_id, f["--run_name"]
    expected = {
        "--config": str(REPO / spec["recipe"]),
        "--train_jsonl": str(REPO / PREPARE[experiment][1] / "train.jsonl"),
        "--val_jsonl": str(REPO / PREPARE[experiment][1] / "validation.jsonl"),
        "--train_n": spec["train_n"], "--seed": "42", "--max_prompt_tokens": spec["max_prompt_tokens"],
        "--system_prompt": spec["system_prompt"], "--model_name_or_path": "Qwen/Qwen3-8B",
        "--style": "concise_casual_beginner", "--learning_rate": "5e-6",
        "--per_device_train_batch_size": spec["bs"], "--gradient_accumulation_steps": spec["ga"],
        "--output_dir": str(REPO / "runs" / spec["runs"] / f["--run_name"]), "--report_to": "wandb",
    }
    assert {k: f.get(k) for k in expected} == expected
    assert "--eval_n" not in f and "--resume_from_checkpoint" not in f
    if experiment == "tldr":
        assert f["--user_model_name_or_path"] == "Qwen/Qwen3-8B"
    else:
        assert "--user_model_name_or_path" not in f and "--claude_model" not in f
        assert "ANTHROPIC_API_KEY is not set" in proc.stderr
    assert "SCRATCH is not set" in proc.stdout
    assert exported(proc.stdout) == {"WANDB_PROJECT": spec["project"], "WANDB_MODE": "offline",
                                     "WANDB_DIR": f["--output_dir"]}
    assert proc.stdout.count("wandb runs offline") == 1
    if not (REPO / PREPARE[experiment][1] / "train.jsonl").exists():  # not prepared yet: named with its maker
        assert f"(make it with {spec['prepare']})" in proc.stderr
    assert "dry run: nothing was executed" in proc.stdout


@pytest.mark.parametrize("experiment", list(TRAINING))
def test_training_dry_run_shows_every_override(experiment, tmp_path, data_files):
    spec = TRAINING[experiment]
    recipe = tmp_path / "my recipe.yaml"
    recipe.write_text("logging_steps: 1\n")
    env = {**data_files, "MODEL_NAME_OR_PATH": "/models/policy-x", "STYLE": "poetic", "LR": "1e-5", "BS": "3",
           "GA": "7", "WORLD_SIZE": "8", "TRAIN_N": "11", "EVAL_N": "5", "SEED": "123", "MAX_PROMPT_TOKENS": "300",
           "SYSTEM_PROMPT": "general" if experiment == "tldr" else "tldr", "RECIPE": str(recipe),
           "RUN_ID": "run-17", "SCRATCH": str(tmp_path / "scratch"), "RESUME_FROM_CHECKPOINT": "last",
           "WANDB_PROJECT": "my-project", "WANDB_NAME": "my-wandb-name", "ANTHROPIC_API_KEY": "k", **WITH_PACKAGE}
    if experiment == "tldr":
        env["USER_MODEL_NAME_OR_PATH"] = "/models/user-y"
    else:
        env["CLAUDE_MODEL"] = "claude-test-model"
    proc = run(spec["script"], "--dry-run", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    argv = printed_command(proc.stdout)
    assert argv[:4] == ["accelerate", "launch", "--num_processes", "8"]
    f = flags(argv)
    expected = {
        "--config": str(recipe), "--train_jsonl": data_files["TRAIN_JSONL"], "--val_jsonl": data_files["VAL_JSONL"],
        "--train_n": "11", "--eval_n": "5", "--seed": "123", "--max_prompt_tokens": "300",
        "--system_prompt": env["SYSTEM_PROMPT"], "--model_name_or_path": "/models/policy-x", "--style": "poetic",
        "--learning_rate": "1e-5", "--per_device_train_batch_size": "3", "--gradient_accumulation_steps": "7",
        "--output_dir": str(tmp_path / "scratch" / spec["runs"] / "run-17"), "--run_name": "my-wandb-name",
        "--resume_from_checkpoint": "last",
    }
    assert {k: f.get(k) for k in expected} == expected
    if experiment == "tldr":
        assert f["--user_model_name_or_path"] == "/models/user-y"
    else:
        assert f["--claude_model"] == "claude-test-model"
    assert exported(proc.stdout)["WANDB_PROJECT"] == "my-project"
    assert "SCRATCH is not set" not in proc.stdout  # and the only warning is the schedule's, for 11 of 3 x 7 x 8:
    assert proc.stderr == "warning: 11 prompts are less than one generation batch of 168: nothing would train\n"

    proc = run(spec["script"], "--dry-run", env={**env, "OUTPUT_DIR": "/elsewhere/out"}, cwd=tmp_path)
    assert flags(printed_command(proc.stdout))["--output_dir"] == "/elsewhere/out"


@pytest.mark.parametrize("experiment", list(TRAINING))
def test_world_size_one_runs_plain_python(experiment, tmp_path, data_files):
    script = TRAINING[experiment]["script"]
    proc = run(script, "--dry-run", env={**data_files, "WORLD_SIZE": "1"}, cwd=tmp_path)
    assert printed_command(proc.stdout)[:2] == ["python", TRAIN_PY]
    proc = run(script, "--dry-run", env={**data_files, "WORLD_SIZE": "1", "PYTHON": "/opt/py 3/bin/python"},
               cwd=tmp_path)
    assert printed_command(proc.stdout)[:2] == ["/opt/py 3/bin/python", TRAIN_PY]
    proc = run(script, "--dry-run", env={**data_files, "WORLD_SIZE": "two"}, cwd=tmp_path)
    assert proc.returncode == 2 and "WORLD_SIZE must be a positive integer" in proc.stderr


@pytest.mark.parametrize("experiment", list(TRAINING))
def test_accelerate_config_is_passed_and_world_size_stays_the_process_count(experiment, tmp_path, data_files):
    script = TRAINING[experiment]["script"]
    config = str(REPO / "multigpu_accelerate_config.yaml")
    proc = run(script, "--dry-run", env={**data_files, "ACCELERATE_CONFIG": config}, cwd=tmp_path)
    argv = printed_command(proc.stdout)
    assert argv[:7] == ["accelerate", "launch", "--config_file", config, "--num_processes", "4", TRAIN_PY]
    missing = str(tmp_path / "nope.yaml")
    proc = run(script, "--dry-run", env={**data_files, "ACCELERATE_CONFIG": missing}, cwd=tmp_path)
    assert proc.returncode == 0 and f"ACCELERATE_CONFIG: no such file: {missing}" in proc.stderr


def test_paths_with_spaces_and_quotes_survive(tmp_path):
    folder = tmp_path / "my data's \"dir\""
    folder.mkdir()
    train, val = folder / "train file.jsonl", folder / "val $HOME.jsonl"
    for path in (train, val):
        path.write_text('{"prompt": "x"}\n')
    out = str(tmp_path / "out dir's \"x\"")
    extra = ["--hindsight_template", "It's a \"template\" with $vars and\ttabs"]
    env = {"TRAIN_JSONL": str(train), "VAL_JSONL": str(val), "OUTPUT_DIR": out, "WORLD_SIZE": "1"}
    proc = run("train_online_sdpo_tldr.sh", "--dry-run", "--", *extra, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[proc.stdout.splitlines().index("command:") + 1]
    # The printed line, pasted into bash, gives back exactly the arguments.
    as_bash = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True, check=True)
    argv = as_bash.stdout.split("\0")[:-1]
    f = flags(argv)
    assert (f["--train_jsonl"], f["--val_jsonl"], f["--output_dir"]) == (str(train), str(val), out)
    assert argv[-2:] == extra


def test_quoting_leaves_safe_words_bare_and_pastes_back_exactly():
    words = ["plain", "4,5,6,7", "/a/b-c_d.e:f=g@h%i+j", "2 6", "", "it's", 'say "hi"', "$HOME", "`id`", "a\tb",
             "line\nbreak", "*.json", "~/x", "x;y", "é", "!x", "back\\slash", "--flag=a b"]
    quote = subprocess.run(["bash", "-c", f'source {SCRIPTS / "_common.sh"}; sdpo_quote_words "$@"', "quote", *words],
                           capture_output=True, text=True, check=True)
    line = quote.stdout.removesuffix("\n")
    assert line.startswith("plain 4,5,6,7 /a/b-c_d.e:f=g@h%i+j '2 6' '' 'it'\\''s' ")  # no 4\,5\,6\,7 nor 2\ 6
    pasted = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True, check=True)
    assert pasted.stdout.split("\0")[:-1] == words
    assert shlex.split(line) == words


def test_wandb_writes_into_the_run_folder_unless_wandb_dir_is_set(tmp_path, data_files):
    env = {**data_files, "OUTPUT_DIR": str(tmp_path / "my run")}
    proc = run("train_online_sdpo_tldr.sh", "--dry-run", env=env, cwd=tmp_path)
    assert exported(proc.stdout)["WANDB_DIR"] == env["OUTPUT_DIR"]
    assert f"upload later with: wandb sync '{tmp_path}/my run/wandb'/offline-run-*)" in proc.stdout
    proc = run("train_online_sdpo_tldr.sh", "--dry-run", env={**env, "WANDB_DIR": "/shared/wandb"}, cwd=tmp_path)
    assert exported(proc.stdout)["WANDB_DIR"] == "/shared/wandb"
    assert "wandb sync /shared/wandb/wandb/offline-run-*)" in proc.stdout


def test_arguments_after_double_dash_pass_through_in_order(tmp_path, data_files):
    proc = run("train_online_sdpo.sh", "--dry-run", "--", "--logging_steps", "5", "--dry-run", "--bf16", "false",
               env=data_files, cwd=tmp_path)
    assert proc.returncode == 0
    assert printed_command(proc.stdout)[-5:] == ["--logging_steps", "5", "--dry-run", "--bf16", "false"]


def test_real_run_executes_exactly_the_printed_command(tmp_path, data_files, recorder):
    rec_env, record = recorder
    for world_size, launcher in (("1", rec_env["PYTHON"]), ("2", "accelerate")):
        env = {**data_files, **rec_env, "WORLD_SIZE": world_size, "RUN_ID": "r", "OUTPUT_DIR": str(tmp_path / "o p")}
        proc = run("train_online_sdpo_tldr.sh", "--", "--max_steps", "2", env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(record.read_text())
        printed = printed_command(proc.stdout)
        assert printed[0] == launcher and got["argv"] == printed[1:]
        assert got["env"] == {"WANDB_MODE": "offline", "WANDB_PROJECT": "sdpo-tldr", "WANDB_DIR": str(tmp_path / "o p")}
    assert not (tmp_path / "o p").exists()  # the launch creates nothing itself; train.py makes OUTPUT_DIR


@pytest.mark.parametrize("experiment", list(TRAINING))
def test_missing_data_file_stops_real_run_naming_the_prepare_script(experiment, tmp_path, data_files, recorder):
    rec_env, record = recorder
    spec = TRAINING[experiment]
    env = {**data_files, **rec_env, "WORLD_SIZE": "1", "ANTHROPIC_API_KEY": "k",
           "VAL_JSONL": str(tmp_path / "absent.jsonl")}
    proc = run(spec["script"], env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert f"VAL_JSONL: no such file: {tmp_path / 'absent.jsonl'} (make it with {spec['prepare']})" in proc.stderr
    assert not record.exists()


def test_claude_script_without_api_key_stops_before_launching(tmp_path, data_files, recorder):
    rec_env, record = recorder
    proc = run("train_online_sdpo.sh", env={**data_files, **rec_env, "WORLD_SIZE": "1"}, cwd=tmp_path)
    assert proc.returncode == 1
    assert "ANTHROPIC_API_KEY is not set" in proc.stderr and "Nothing was launched" in proc.stderr
    assert "command:" not in proc.stdout
    assert not record.exists()
    proc = run("train_online_sdpo.sh", env={**data_files, **rec_env, "WORLD_SIZE": "1", "ANTHROPIC_API_KEY": "k"},
               cwd=tmp_path)
    assert proc.returncode == 0 and record.exists()


# ------------------------------------------------------------------------------------------------ all four scripts
@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_secrets_are_never_printed(script, tmp_path, data_files):
    proc = run(script, "--dry-run", env={**data_files, **SECRETS}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "MARKER" not in output  # no secret, nor any part of one
    assert "HF_TOKEN: set" in proc.stdout
    if script.startswith("train"):
        assert "ANTHROPIC_API_KEY: set" in proc.stdout and "WANDB_API_KEY: set" in proc.stdout
        assert "WANDB_MODE" not in exported(proc.stdout) and "offline" not in output


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_unknown_option_is_a_usage_error(script, tmp_path):
    proc = run(script, "--dryrun", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown option: --dryrun" in proc.stderr and "usage:" in proc.stderr
    assert "command:" not in proc.stdout


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_dry_run_creates_no_folder(script, tmp_path, data_files):
    def repo_outputs():
        runs = sorted((REPO / "runs").rglob("*")) if (REPO / "runs").exists() else []
        return runs, [(REPO / d).exists() for _, d in PREPARE.values()]

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    repo_before = repo_outputs()
    env = {**data_files, "SCRATCH": str(tmp_path / "scratch"), "OUT_DIR": str(tmp_path / "prepared" / "x"),
           "OUTPUT_DIR": str(tmp_path / "explicit" / "out")}
    for extra in ({}, {"OUTPUT_DIR": ""}):  # explicit OUTPUT_DIR, then the $SCRATCH default
        assert run(script, "--dry-run", env={**env, **extra}, cwd=tmp_path).returncode == 0
    assert run(script, "--dry-run", env={"RUN_ID": "no-folder-check"}, cwd=tmp_path).returncode == 0  # repo default
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert repo_outputs() == repo_before


# ------------------------------------------------------------------------------------------------ data preparation
@pytest.mark.parametrize("task", list(PREPARE))
def test_prepare_dry_run_defaults_and_overrides(task, tmp_path):
    script, default_dir = PREPARE[task]
    proc = run(script, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0
    argv = printed_command(proc.stdout)
    assert argv == ["python", str(REPO / "prepare_data.py"), task, "--output_dir", str(REPO / default_dir)]
    source = tmp_path / "local copy"
    source.mkdir()
    env = {"OUT_DIR": str(tmp_path / "out dir"), "DATA_SOURCE": str(source), "PYTHON": "/usr/bin/python3"}
    proc = run(script, "--dry-run", "--", "--show", "5", env=env, cwd=tmp_path)
    assert printed_command(proc.stdout) == ["/usr/bin/python3", str(REPO / "prepare_data.py"), task, "--output_dir",
                                            env["OUT_DIR"], "--source", str(source), "--show", "5"]
    proc = run(script, env={"DATA_SOURCE": str(tmp_path / "missing")}, cwd=tmp_path)
    assert proc.returncode == 1 and "DATA_SOURCE: no such folder" in proc.stderr


def test_prepare_helpsteer_script_end_to_end_from_local_copy(tmp_path):
    source = tmp_path / "hs2"
    source.mkdir()
    row = {"prompt": "Name three rivers.", "response": "Nile, Amazon, Danube.", "helpfulness": 4,
           "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 1}
    for split in ("train", "validation"):
        (source / f"{split}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    out = tmp_path / "prepared prompts"
    env = {"OUT_DIR": str(out), "DATA_SOURCE": str(source), "PYTHON": sys.executable,
           "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = run("prepare_data_helpsteer.sh", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train: rows=1, multi_turn=0, empty=0, too_long=0, duplicate=0, kept=1" in proc.stdout
    for split in ("train", "validation"):
        assert (out / f"{split}.jsonl").read_text(encoding="utf-8") == '{"prompt": "Name three rivers."}\n'


# ------------------------------------------------------------------------------------------------ recipes
PAPER_SETTINGS = {"gradient_checkpointing": True, "optim": "adamw_torch_8bit",
                  "optim_args": "bf16_stochastic_round=true", "lr_scheduler_type": "constant", "warmup_ratio": 0.0,
                  "temperature": 1.0, "num_train_epochs": 1,
                  "save_strategy": "steps", "save_steps": 3, "logging_steps": 1, "loss_type": "grpo",
                  "model_init_kwargs": {"dtype": "bfloat16"}}


@pytest.mark.parametrize("recipe,lengths", [("tldr.yaml", (2048, 2048)), ("helpsteer.yaml", (2048, 2048))])
def test_recipes_hold_the_paper_settings_as_grpo_config_fields(recipe, lengths):
    from trl import GRPOConfig

    settings = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    assert set(settings) <= {f.name for f in dataclasses.fields(GRPOConfig)}
    assert settings == {**PAPER_SETTINGS, "max_prompt_length": lengths[0], "max_completion_length": lengths[1]}


@pytest.mark.parametrize("experiment", list(TRAINING))
def test_printed_command_parses_with_train_py(experiment, tmp_path):
    """train.py's own parser accepts every flag the script passes, with the recipe underneath (no model loaded;
    --use_cpu only lets bf16 pass the GPU check on this machine)."""
    from trl import TrlParser

    import sdpo_interactions.cli.train as train

    env = {"TRAIN_JSONL": str(REPO / "data/sample/train.jsonl"), "VAL_JSONL": str(REPO / "data/sample/validation.jsonl"),
           "WORLD_SIZE": "1", "EVAL_N": "4", "RUN_ID": "parse-check", "OUTPUT_DIR": str(tmp_path / "out"),
           "ANTHROPIC_API_KEY": "k"}
    proc = run(TRAINING[experiment]["script"], "--dry-run", "--", "--use_cpu", "true", env=env, cwd=tmp_path)
    argv = printed_command(proc.stdout)
    script_args, training_args, model_args = TrlParser(train.ARGUMENTS).parse_args_and_config(args=argv[2:])
    assert training_args.optim == "adamw_torch_8bit" and training_args.bf16 and training_args.save_steps == 3
    assert training_args.learning_rate == 5e-6 and training_args.run_name == "parse-check"
    assert training_args.per_device_train_batch_size == int(TRAINING[experiment]["bs"])
    assert training_args.max_completion_length == 2048 and training_args.loss_type == "grpo"
    assert script_args.train_n == int(TRAINING[experiment]["train_n"]) and script_args.eval_n == 4
    assert script_args.system_prompt == TRAINING[experiment]["system_prompt"]
    assert script_args.user_model_name_or_path == ("Qwen/Qwen3-8B" if experiment == "tldr" else None)


# ------------------------------------------------------------------------------------------------ schedule
@pytest.mark.parametrize(
    "experiment, env, steps, interactions, checkpoints",
    [
        ("tldr", {}, 8, 256, "3 6 8"),  # the paper's TL;DR run: 256 prompts, 2 x 4 x 4 = 32 per step
        ("helpsteer", {"ANTHROPIC_API_KEY": "sk-ant-x"}, 32, 512, "3 6 9 12 15 18 21 24 27 30 32"),
        ("tldr", {"WORLD_SIZE": "1", "TRAIN_N": "20"}, 2, 16, "2"),
        ("tldr", {"WORLD_SIZE": "2", "TRAIN_N": "100", "SAVE_STEPS": "2"}, 6, 96, "2 4 6"),
    ],
)
def test_dry_run_and_help_state_steps_interactions_and_checkpoints(experiment, env, steps, interactions,
                                                                     checkpoints, tmp_path):
    script = TRAINING[experiment]["script"]
    env = {"OUTPUT_DIR": str(tmp_path), **WITH_PACKAGE, **env}
    for args in (["--dry-run"], ["--help"]):
        result = run(script, *args, env=env)
        assert result.returncode == 0, result.stderr
        assert f"prompts -> {steps} steps an epoch, {steps} steps in all (1 epoch), {interactions} interactions" in (
            result.stdout)
        assert f"checkpoints at steps: {checkpoints} (every" in result.stdout
    argv = printed_command(run(script, "--dry-run", env=env).stdout)
    # SAVE_STEPS unset leaves save_steps to the recipe, as the schedule read it.
    assert argv[argv.index("--save_steps") + 1] == env["SAVE_STEPS"] if "SAVE_STEPS" in env else "--save_steps" not in argv


def test_schedule_counts_answers_per_prompt_epochs_and_max_steps_from_recipe_and_flags(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_train_epochs: 2\nsave_steps: 5\nnum_generations: 2\n")
    env = {"OUTPUT_DIR": str(tmp_path), "RECIPE": str(recipe), **WITH_PACKAGE}
    # 32 answers a step are 16 prompts x 2: 256 prompts make 16 steps an epoch, 32 in two.
    proc = run("train_online_sdpo_tldr.sh", "--dry-run", env=env)
    assert "256 prompts -> 16 steps an epoch, 32 steps in all (2 epochs), 1024 interactions" in proc.stdout
    assert "checkpoints at steps: 5 10 15 20 25 30 32 (every 5 steps" in proc.stdout
    proc = run("train_online_sdpo_tldr.sh", "--dry-run", "--", "--max_steps", "7", "--num_generations", "4", env=env)
    assert "256 prompts -> 32 steps an epoch, 7 steps in all (0.219 epochs), 224 interactions" in proc.stdout


def test_schedule_warns_when_train_n_is_less_than_a_step(tmp_path):
    result = run("train_online_sdpo_tldr.sh", "--dry-run", env={"OUTPUT_DIR": str(tmp_path), "TRAIN_N": "10",
                                                                 **WITH_PACKAGE})
    assert result.returncode == 0 and "nothing would train" in result.stderr
    assert "-> 0 steps an epoch, 0 steps in all" in result.stdout and "checkpoints at steps: none" in result.stdout


def test_schedule_without_the_package_costs_only_the_printout(tmp_path):
    result = run("train_online_sdpo_tldr.sh", "--dry-run", env={"OUTPUT_DIR": str(tmp_path), "PYTHON": "false"})
    assert result.returncode == 0 and "schedule: n/a (false -m sdpo_interactions.schedule failed" in result.stdout
    assert "dry run: nothing was executed" in result.stdout


# ------------------------------------------------------------------------------------------------ offline
def test_offline_dry_run_has_the_authors_settings_and_parses_with_train_offline(tmp_path):
    """The offline script's defaults are the authors' (Qwen3-8B, LR 2e-6, BS 4, GA 8, 2 epochs), and
    train_offline.py's own parser accepts every flag it passes, with the recipe underneath."""
    from trl import TrlParser

    import sdpo_interactions.cli.train_offline as train_offline

    env = {"TRAIN_JSONL": str(REPO / "data/sample/conversations.jsonl"), "OUTPUT_DIR": str(tmp_path / "out")}
    proc = run("train_offline_sdpo.sh", "--dry-run", env={**env, **WITH_PACKAGE})
    assert proc.returncode == 0, proc.stderr
    argv = printed_command(proc.stdout)
    assert argv[:5] == ["accelerate", "launch", "--num_processes", "4", str(REPO / "train_offline.py")]
    assert "schedule: 128 interactions a step (4 answers a process x 8 accumulation steps x 4 processes" in proc.stdout
    assert "the number of samples is known once the data is loaded" in proc.stdout
    proc = run("train_offline_sdpo.sh", "--dry-run", env={**env, **WITH_PACKAGE, "TRAIN_N": "1000"})
    assert "1000 samples -> 7 steps an epoch, 14 steps in all (2 epochs)" in proc.stdout  # the recipe's 2 epochs
    one = printed_command(run("train_offline_sdpo.sh", "--dry-run", "--", "--use_cpu", "true",
                              env={**env, "WORLD_SIZE": "1", "TRAIN_N": "64"}).stdout)
    script_args, config, model_args = TrlParser(train_offline.ARGUMENTS).parse_args_and_config(
        args=one[2:])
    assert (config.learning_rate, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (
        2e-6, 4, 8)
    assert config.num_train_epochs == 2 and config.lr_scheduler_type == "cosine" and config.warmup_ratio == 0.05
    assert config.advantage_baseline == "none" and config.ignore_first_tokens == 2 and config.loss_type == "grpo"
    assert model_args.model_name_or_path == "Qwen/Qwen3-8B" and script_args.train_n == 64
    assert script_args.max_history_messages == 5


def test_offline_demo_dry_run(tmp_path):
    proc = run("demo_offline.sh", "--dry-run", env={"OUT_DIR": str(tmp_path / "demo"), "PYTHON": "py"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    train, heatmap, report = (shlex.split(line) for line in lines[lines.index("commands:") + 1:][:3])
    assert train[:2] == ["py", str(REPO / "train_offline.py")]
    assert train[train.index("--train_jsonl") + 1] == str(REPO / "data/sample/conversations.jsonl")
    assert heatmap[heatmap.index("--token_log") + 1] == str(tmp_path / "demo" / "token_logps.jsonl")
    assert heatmap[heatmap.index("--output_dir") + 1] == str(tmp_path / "demo" / "signal")
    assert report == ["py", str(REPO / "scripts" / "demo_report.py"), str(tmp_path / "demo")]  # it ends with a summary
