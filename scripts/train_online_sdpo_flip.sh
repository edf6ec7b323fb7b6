#!/usr/bin/env bash
# The paper's preference flip (Fig. 4): online SDPO on TL;DR prompts, with Qwen3-4B as the policy and as the local
# user, whose persona is inverted after 256 interactions (the paper's 250, rounded to whole steps of 16). Every
# setting is an environment variable (see usage below); the run settings are in recipes/flip_tldr.yaml.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/train_online_sdpo_flip.sh [--dry-run] [-- extra train.py arguments]

The preference flip of the paper (Fig. 4): online SDPO on TL;DR summarization, the user model on every rank (or
served once, USER_API_BASE), its persona inverted partway through; the policy is expected to reverse its style.
Variables (default):
  MODEL_NAME_OR_PATH       policy model (Qwen/Qwen3-4B)
  USER_MODEL_NAME_OR_PATH  user-simulator model, loaded on every rank (Qwen/Qwen3-4B)
  USER_API_BASE            URL of a shared OpenAI-compatible user server, used instead of loading the user model on
                           every rank (unset); USER_API_MODEL: the model name it serves (USER_MODEL_NAME_OR_PATH)
  STYLE_SCHEDULE           personas in turn, STYLE:INTERACTIONS,...,STYLE, interactions over all processes, each
                           switch on a step boundary
                           (concise_casual_beginner:256,detailed_professional_expert: 16 steps, then the inverse)
  PERSONA_FILE             YAML or JSON file of style -> persona adding to or overriding personas.yaml (unset)
  LR, BS, GA               learning rate, per-device batch size, gradient accumulation (5e-6, 4, 1)
USAGE
  sdpo_launch_usage
  sdpo_vllm_usage
  cat <<'USAGE'
  TRAIN_JSONL, VAL_JSONL   prompt files (./data/tldr_prompts_unique/{train,validation}.jsonl)
  TRAIN_N, EVAL_N          prompts used for training (512: 256 per persona, each prompt once) and validation (unset)
  SEED                     seed of the prompt subset and of training (42)
  MAX_PROMPT_TOKENS        drop longer prompts, in chat-formatted tokens (512, the authors' filter)
  SYSTEM_PROMPT            policy system prompt: tldr or general (tldr)
  RECIPE                   YAML run settings passed with --config (recipes/flip_tldr.yaml)
  SAVE_STEPS               save a checkpoint every this many steps (the recipe's save_steps: 4)
  RUN_ID                   run name (flip-schedule-<date>-<time>)
  OUTPUT_DIR               checkpoints ($SCRATCH/sdpo-flip-runs/<run-id>; without SCRATCH:
                           ./runs/sdpo-flip-runs/<run-id> in the repository)
  RESUME_FROM_CHECKPOINT   checkpoint folder to resume from, or "last" for the newest in OUTPUT_DIR (unset)
  WANDB_PROJECT, WANDB_NAME  wandb project (sdpo-flip) and run name (RUN_ID); offline without WANDB_API_KEY
  WANDB_DIR                where wandb writes its files: <WANDB_DIR>/wandb (OUTPUT_DIR)
  PYTHON                   python used when WORLD_SIZE=1 (python)
Options:
  --dry-run   print the settings, the step and persona schedules and the exact command, run nothing
  -h, --help  this help

Evaluate with scripts/eval_checkpoints_tldr.sh (BASELINE=Qwen/Qwen3-4B): every checkpoint under both personas.
With the variables as set now:
USAGE
  sdpo_schedule
}

EXPERIMENT=flip
RUNS_SUBDIR=sdpo-flip-runs
PREPARE_SCRIPT=scripts/prepare_data_tldr.sh
: "${MODEL_NAME_OR_PATH:=Qwen/Qwen3-4B}"
: "${USER_MODEL_NAME_OR_PATH:=Qwen/Qwen3-4B}"
: "${STYLE_SCHEDULE:=concise_casual_beginner:256,detailed_professional_expert}"
: "${LR:=5e-6}"
: "${BS:=4}"
: "${GA:=1}"
: "${WORLD_SIZE:=4}"
: "${TRAIN_JSONL:=$SDPO_ROOT/data/tldr_prompts_unique/train.jsonl}"
: "${VAL_JSONL:=$SDPO_ROOT/data/tldr_prompts_unique/validation.jsonl}"
: "${TRAIN_N:=512}"
: "${SEED:=42}"
: "${MAX_PROMPT_TOKENS:=512}"
: "${SYSTEM_PROMPT:=tldr}"
: "${RECIPE:=$SDPO_ROOT/recipes/flip_tldr.yaml}"
: "${WANDB_PROJECT:=sdpo-flip}"

sdpo_online_train local "$@"
