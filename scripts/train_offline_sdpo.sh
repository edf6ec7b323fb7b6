#!/usr/bin/env bash
# Offline SDPO on logged conversations (WildChat, WildFeedback or your own), the user's real next message as o.
# Every setting is an environment variable (see usage below); the paper's run settings are in recipes/offline.yaml.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/train_offline_sdpo.sh [--dry-run] [-- extra train_offline.py arguments]

Offline SDPO on conversations (JSONL of {"messages": [...]}): every assistant turn with the user turn after it.
Variables (default):
  MODEL_NAME_OR_PATH       policy model (Qwen/Qwen3-8B)
  LR, BS, GA               learning rate, per-device batch size, gradient accumulation (2e-6, 4, 8)
USAGE
  sdpo_launch_usage
  cat <<'USAGE'
  TRAIN_JSONL, VAL_JSONL   conversation files (./data/wildchat_conversations/train.jsonl; VAL_JSONL unset)
  TRAIN_N, EVAL_N          samples used for training and validation (unset: all)
  SEED                     seed of the subset and of training (42)
  MAX_PROMPT_TOKENS        longest prompt; longer ones lose their earliest exchanges first (2048)
  RECIPE                   YAML run settings passed with --config (recipes/offline.yaml)
  SAVE_STEPS               save a checkpoint every this many steps (the recipe's save_steps: 200)
  RUN_ID                   run name (offline-<data folder>-<date>-<time>)
  OUTPUT_DIR               checkpoints ($SCRATCH/sdpo-offline-runs/<run-id>; without SCRATCH:
                           ./runs/sdpo-offline-runs/<run-id> in the repository)
  RESUME_FROM_CHECKPOINT   checkpoint folder to resume from, or "last" for the newest in OUTPUT_DIR (unset)
  WANDB_PROJECT, WANDB_NAME  wandb project (sdpo-offline) and run name (RUN_ID); offline without WANDB_API_KEY
  WANDB_DIR                where wandb writes its files: <WANDB_DIR>/wandb (OUTPUT_DIR)
  PYTHON                   python used when WORLD_SIZE=1 (python)
Options:
  --dry-run   print the settings, the schedule and the exact command, run nothing
  -h, --help  this help

With the variables as set now:
USAGE
  sdpo_schedule
}

EXPERIMENT=offline
RUNS_SUBDIR=sdpo-offline-runs
PREPARE_SCRIPT=scripts/prepare_data_wildchat.sh
ENTRY=train_offline.py
: "${MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${LR:=2e-6}"
: "${BS:=4}"
: "${GA:=8}"
: "${WORLD_SIZE:=4}"
: "${TRAIN_JSONL:=$SDPO_ROOT/data/wildchat_conversations/train.jsonl}"
: "${SEED:=42}"
: "${MAX_PROMPT_TOKENS:=2048}"
: "${RECIPE:=$SDPO_ROOT/recipes/offline.yaml}"
: "${WANDB_PROJECT:=sdpo-offline}"
RUN_TAG=$(basename "$(dirname "$TRAIN_JSONL")")
SHOWN_MODE_VARS=()
MODE_ARGS=()

sdpo_parse_args "$@"
if [[ -n "${USE_VLLM:-}" ]]; then sdpo_usage_error "USE_VLLM: offline SDPO generates nothing (the answers are logged)"; fi
sdpo_train
