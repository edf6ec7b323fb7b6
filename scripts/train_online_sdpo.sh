#!/usr/bin/env bash
# Experiment 2: online SDPO on HelpSteer2 prompts, with Claude Haiku playing the user (ClaudeStyleUserSimulator).
# Every setting is an environment variable (see usage below); the paper's run settings are in recipes/helpsteer.yaml.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/train_online_sdpo.sh [--dry-run] [-- extra train.py arguments]

Online SDPO on HelpSteer2 prompts with Claude Haiku as the simulated user (needs ANTHROPIC_API_KEY), or a user
model on your own server (USER_API_BASE).
Variables (default):
  MODEL_NAME_OR_PATH       policy model (Qwen/Qwen3-8B)
  STYLE                    simulated user's style (concise_casual_beginner); the personas are in personas.yaml
  STYLE_SCHEDULE           personas in turn instead of STYLE, STYLE:INTERACTIONS,...,STYLE (the last lasts to the
                           end; each switch on a step boundary), e.g. concise_casual_beginner:256,poetic (unset)
  PERSONA_FILE             YAML or JSON file of style -> persona adding to or overriding personas.yaml (unset)
  LR, BS, GA               learning rate, per-device batch size, gradient accumulation (5e-6, 4, 1)
USAGE
  sdpo_launch_usage
  sdpo_vllm_usage
  cat <<'USAGE'
  TRAIN_JSONL, VAL_JSONL   prompt files (./data/helpsteer2_prompts/{train,validation}.jsonl)
  TRAIN_N, EVAL_N          prompts used for training (512) and validation (unset: all)
  SEED                     seed of the prompt subset and of training (42)
  MAX_PROMPT_TOKENS        drop longer prompts, in chat-formatted tokens (512, the authors' filter)
  SYSTEM_PROMPT            policy system prompt: tldr or general (general)
  CLAUDE_MODEL             Claude model of the user (unset: train.py's default, Claude Haiku 4.5)
  USER_API_BASE            URL of an OpenAI-compatible user server to use instead of Claude (unset); with
                           USER_API_MODEL, the model name it serves, and USER_API_KEY, its key if it needs one
  RECIPE                   YAML run settings passed with --config (recipes/helpsteer.yaml)
  SAVE_STEPS               save a checkpoint every this many steps (the recipe's save_steps: 3)
  RUN_ID                   run name (helpsteer-<style>-<date>-<time>)
  OUTPUT_DIR               checkpoints ($SCRATCH/sdpo-runs/<run-id>; without SCRATCH:
                           ./runs/sdpo-runs/<run-id> in the repository)
  RESUME_FROM_CHECKPOINT   checkpoint folder to resume from, or "last" for the newest in OUTPUT_DIR (unset)
  WANDB_PROJECT, WANDB_NAME  wandb project (sdpo-helpsteer2) and run name (RUN_ID); offline without WANDB_API_KEY
  WANDB_DIR                where wandb writes its files: <WANDB_DIR>/wandb (OUTPUT_DIR)
  PYTHON                   python used when WORLD_SIZE=1 (python)
Options:
  --dry-run   print the settings, the schedule and the exact command, run nothing
  -h, --help  this help

With the variables as set now:
USAGE
  sdpo_schedule
}

EXPERIMENT=helpsteer
RUNS_SUBDIR=sdpo-runs
PREPARE_SCRIPT=scripts/prepare_data_helpsteer.sh
: "${MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${STYLE:=concise_casual_beginner}"
: "${LR:=5e-6}"
: "${BS:=4}"
: "${GA:=1}"
: "${WORLD_SIZE:=4}"
: "${TRAIN_JSONL:=$SDPO_ROOT/data/helpsteer2_prompts/train.jsonl}"
: "${VAL_JSONL:=$SDPO_ROOT/data/helpsteer2_prompts/validation.jsonl}"
: "${TRAIN_N:=512}"
: "${SEED:=42}"
: "${MAX_PROMPT_TOKENS:=512}"
: "${SYSTEM_PROMPT:=general}"
: "${RECIPE:=$SDPO_ROOT/recipes/helpsteer.yaml}"
: "${WANDB_PROJECT:=sdpo-helpsteer2}"

sdpo_online_train claude "$@"
