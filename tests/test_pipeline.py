"""The default pipeline, scaled down: the TL;DR training script with its own step arithmetic, then the TL;DR
evaluation script with its defaults, on the embedded model. The evaluation must find exactly the checkpoints the
training script said it would save, with the interactions each had seen."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # the scripts end to end, on the embedded model

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
# The recipe's settings that a CPU cannot run (bf16, the 8-bit optimizer) or need not (long answers), replaced.
CPU = {"bf16": False, "optim": "adamw_torch", "gradient_checkpointing": False, "model_init_kwargs": {"dtype": "float32"},
       "max_prompt_length": 384, "max_completion_length": 8, "save_steps": 2}


def script(name, env, *args):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ANTHROPIC_"))}
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], env={**base, "WANDB_MODE": "disabled", **env},
                          capture_output=True, text=True, timeout=900)


def test_the_evaluation_defaults_find_every_checkpoint_the_training_defaults_save(model_dir, tmp_path):
    recipe = tmp_path / "cpu.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "recipes" / "tldr.yaml").read_text()), **CPU}))
    run_dir = tmp_path / "run"
    train_env = {
        "PYTHON": sys.executable, "WORLD_SIZE": "1", "TRAIN_N": "6", "BS": "1", "GA": "2", "RECIPE": str(recipe),
        "MODEL_NAME_OR_PATH": model_dir, "USER_MODEL_NAME_OR_PATH": model_dir, "MAX_PROMPT_TOKENS": "384",
        "TRAIN_JSONL": str(SAMPLE / "train.jsonl"), "VAL_JSONL": str(SAMPLE / "validation.jsonl"),
        "EVAL_N": "2", "OUTPUT_DIR": str(run_dir),
    }
    passthrough = ["--", "--user_max_new_tokens", "8", "--report_to", "none", "--token_log_samples", "0"]
    plan = script("train_online_sdpo_tldr.sh", train_env, "--dry-run", *passthrough)
    assert plan.returncode == 0, plan.stderr
    assert "6 prompts -> 3 steps an epoch, 3 steps in all (1 epoch), 6 interactions" in plan.stdout
    assert "checkpoints at steps: 2 3 (every 2 steps and the last step)" in plan.stdout

    trained = script("train_online_sdpo_tldr.sh", train_env, *passthrough)
    assert trained.returncode == 0, trained.stderr[-3000:]
    saved = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert saved == [2, 3]
    settings = {s: json.loads((run_dir / f"checkpoint-{s}" / "sdpo_run_settings.json").read_text()) for s in saved}
    assert [settings[s]["interactions"]["answers"] for s in saved] == [4, 6]

    evaluated = script("eval_checkpoints_tldr.sh", {
        "PYTHON": sys.executable, "WORLD_SIZE": "1", "RUN_DIR": str(run_dir), "DATA_PATH": str(SAMPLE / "validation.jsonl"),
        "BASELINE": model_dir, "JUDGE_MODEL": model_dir, "EVAL_N": "2", "MAX_PROMPT_TOKENS": "384",
    }, "--", "--judge_max_new_tokens", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(run_dir / "eval" / "win_rates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows].count("oracle") == 1  # the in-context oracle, judged once beside the checkpoints
    rows = [r for r in rows if r["kind"] != "oracle"]
    assert [int(r["step"]) for r in rows] == [2, 3]
    assert [r["interactions"] for r in rows] == [
        str(settings[s]["interactions"]["with_feedback"]) for s in saved
    ]
    assert all(int(r["pairs"]) == 2 for r in rows)
