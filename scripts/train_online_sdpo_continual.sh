#!/usr/bin/env bash
# The paper's continual run (Fig. 6): online SDPO on HelpSteer2 prompts with Qwen3-8B as the policy and Claude Haiku
# as the user, three complementary preferences introduced one after another, 512 interactions each (the paper's
# 500, rounded to whole steps of 16). Every setting is an environment variable (see usage below); the run settings
# are in recipes/continual_helpsteer.yaml.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/train_online_sdpo_continual.sh [--dry-run] [-- extra train.py arguments]

The continual run of the paper (Fig. 6): online SDPO on HelpSteer2 prompts with Claude Haiku as the simulated user
(needs ANTHROPIC_API_KEY; or a user model on your own server, USER_API_BASE), whose preferences arrive one after
another; the policy is expected to learn each without forgetting the earlier ones.
Variables (default):
  MODEL_NAME_OR_PATH       policy model (Qwen/Qwen3-8B)
  STYLE_SCHEDULE           personas in turn, STYLE:INTERACTIONS,...,STYLE, interactions over all processes, each
                           switch on a step boundary
                           (no_emojis:512,less_filler_praise_sycophancy:512,less_formatting: 32 steps each)
  PERSONA_FILE             YAML or JSON file of style -> persona adding to or overriding personas.yaml (unset)
  LR, BS, GA               learning rate, per-device batch size, gradient accumulation (5e-6, 4, 1)
USAGE
  sdpo_launch_usage
  sdpo_vllm_usage
  cat <<'USAGE'
  TRAIN_JSONL, VAL_JSONL   prompt files (./data/helpsteer2_prompts/{train,validation}.jsonl)
  TRAIN_N, EVAL_N          prompts used for training (1536: 512 per persona, each prompt once) and validation
                           (unset: all)
  SEED                     seed of the prompt subset and of training (42)
  MAX_PROMPT_TOKENS        drop longer prompts, in chat-formatted tokens (512, the authors' filter)
  SYSTEM_PROMPT            policy system prompt: tldr or general (general)
  CLAUDE_MODEL             Claude model of the user (unset: train.py's default, Claude Haiku 4.5)
  USER_API_BASE            URL of an OpenAI-compatible user server to use instead of Claude (unset); with
                           USER_API_MODEL, the model name it serves, and USER_API_KEY, its key if it needs one
  RECIPE                   YAML run settings passed with --config (recipes/continual_helpsteer.yaml)
  SAVE_STEPS               save a checkpoint every this many steps (the recipe's save_steps: 8)
  RUN_ID                   run name (continual-schedule-<date>-<time>)
  OUTPUT_DIR               checkpoints ($SCRATCH/sdpo-continual-runs/<run-id>; without SCRATCH:
                           ./runs/sdpo-continual-runs/<run-id> in the repository)
  RESUME_FROM_CHECKPOINT   checkpoint folder to resume from, or "last" for the newest in OUTPUT_DIR (unset)
  WANDB_PROJECT, WANDB_NAME  wandb project (sdpo-continual) and run name (RUN_ID); offline without WANDB_API_KEY
  WANDB_DIR                where wandb writes its files: <WANDB_DIR>/wandb (OUTPUT_DIR)
  PYTHON                   python used when WORLD_SIZE=1 (python)
Options:
  --dry-run   print the settings, the step and persona schedules and the exact command, run nothing
  -h, --help  this help

Evaluate with scripts/eval_checkpoints.sh: every checkpoint judged by Claude under each of the three personas.
With the variables as set now:
USAGE
  sdpo_schedule
}

EXPERIMENT=continual
RUNS_SUBDIR=sdpo-continual-runs
PREPARE_SCRIPT=scripts/prepare_data_helpsteer.sh
: "${MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${STYLE_SCHEDULE:=no_emojis:512,less_filler_praise_sycophancy:512,less_formatting}"
: "${LR:=5e-6}"
: "${BS:=4}"
: "${GA:=1}"
: "${WORLD_SIZE:=4}"
: "${TRAIN_JSONL:=$SDPO_ROOT/data/helpsteer2_prompts/train.jsonl}"
: "${VAL_JSONL:=$SDPO_ROOT/data/helpsteer2_prompts/validation.jsonl}"
: "${TRAIN_N:=1536}"
: "${SEED:=42}"
: "${MAX_PROMPT_TOKENS:=512}"
: "${SYSTEM_PROMPT:=general}"
: "${RECIPE:=$SDPO_ROOT/recipes/continual_helpsteer.yaml}"
: "${WANDB_PROJECT:=sdpo-continual}"

sdpo_online_train claude "$@"
