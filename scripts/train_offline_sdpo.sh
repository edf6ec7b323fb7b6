#!/usr/bin/env bash
# Offline SDPO on logged conversations (WildFeedback, WildChat or your own), the user's real next message as o.
# The default is the paper's Table 2 (WildFeedback); Table 3 is TRAIN_JSONL=<wildchat>/train.jsonl TRAIN_N=50000.
# Every setting is an environment variable (see usage below); the paper's run settings are in recipes/offline.yaml.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/train_offline_sdpo.sh [--dry-run] [-- extra train_offline.py arguments]

Offline SDPO on conversations (JSONL of {"messages": [...]}): every assistant turn with the user turn after it.
The paper's data: Table 2 (the default) trains on WildFeedback (scripts/prepare_data_wildfeedback.sh: about 14k of
its 20k conversations have a follow-up, about 50k samples); Table 3 on a random slice of English WildChat of the
same size (scripts/prepare_data_wildchat.sh, then TRAIN_JSONL=./data/wildchat_conversations/train.jsonl
TRAIN_N=50000). The run prints what its TRAIN_JSONL holds next to the paper's counts.
Variables (default):
  MODEL_NAME_OR_PATH       policy model (Qwen/Qwen3-8B)
  LR, BS, GA               learning rate, per-device batch size, gradient accumulation (2e-6, 4, 8)
USAGE
  sdpo_launch_usage
  cat <<'USAGE'
  TRAIN_JSONL, VAL_JSONL   conversation files (./data/wildfeedback_conversations/train.jsonl; VAL_JSONL unset)
  TRAIN_N, EVAL_N          samples used for training and validation (unset: all; 50000 for Table 3's WildChat slice)
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
PREPARE_SCRIPT=scripts/prepare_data_wildfeedback.sh
ENTRY=train_offline.py
: "${MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${LR:=2e-6}"
: "${BS:=4}"
: "${GA:=8}"
: "${WORLD_SIZE:=4}"
: "${TRAIN_JSONL:=$SDPO_ROOT/data/wildfeedback_conversations/train.jsonl}"
: "${SEED:=42}"
: "${MAX_PROMPT_TOKENS:=2048}"
: "${RECIPE:=$SDPO_ROOT/recipes/offline.yaml}"
: "${WANDB_PROJECT:=sdpo-offline}"
RUN_TAG=$(basename "$(dirname "$TRAIN_JSONL")")
SHOWN_MODE_VARS=()
MODE_ARGS=()

# What TRAIN_JSONL holds next to the paper's Table 2 or 3 (sdpo_interactions.paper_data); a file with bad lines
# stops a real run here, as train_offline.py would after loading its model.
sdpo_data_report() {
  local status=0 args=("$TRAIN_JSONL")
  if [[ ! -f "$TRAIN_JSONL" ]]; then return 0; fi  # sdpo_train names the missing file and its prepare script
  if [[ -n "${TRAIN_N:-}" ]]; then args+=(--train_n "$TRAIN_N"); fi
  "${PYTHON:-python}" -m sdpo_interactions.paper_data "${args[@]}" || status=$?
  if ((status == 2)); then sdpo_missing "TRAIN_JSONL=$TRAIN_JSONL cannot be trained on (see above)"; fi
  if ((status == 1)); then echo "data: n/a (the paper_data module failed: see above)"; fi
  return 0
}

sdpo_parse_args "$@"
if [[ -n "${USE_VLLM:-}" ]]; then sdpo_usage_error "USE_VLLM: offline SDPO generates nothing (the answers are logged)"; fi
sdpo_data_report
sdpo_train
