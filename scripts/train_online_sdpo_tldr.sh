#!/usr/bin/env bash
# Experiment 1: online SDPO on TL;DR prompts, with a Qwen3-8B playing the user: on every rank (StyleUserSimulator),
# or served once to all ranks with USER_API_BASE (OpenAIStyleUserSimulator).
# Every setting is an environment variable (see usage below); the paper's run settings are in recipes/tldr.yaml.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/train_online_sdpo_tldr.sh [--dry-run] [-- extra train.py arguments]

Online SDPO on TL;DR summarization; the user model runs on every rank, or once as a server (USER_API_BASE).
Variables (default):
  MODEL_NAME_OR_PATH       policy model (Qwen/Qwen3-8B)
  USER_MODEL_NAME_OR_PATH  user-simulator model, loaded on every rank (Qwen/Qwen3-8B)
  USER_API_BASE            URL of a shared OpenAI-compatible user server, e.g. http://simhost:8000/v1, used instead
                           of loading the user model on every rank (unset); scripts/serve_user_simulator.sh starts one
  USER_API_MODEL           model name that server serves (USER_MODEL_NAME_OR_PATH); its key, if any: USER_API_KEY
  STYLE                    simulated user's style (concise_casual_beginner); the personas are in personas.yaml
  STYLE_SCHEDULE           personas in turn instead of STYLE, STYLE:INTERACTIONS,...,STYLE (the last lasts to the
                           end; each switch on a step boundary), e.g. concise_casual_beginner:256,poetic (unset)
  PERSONA_FILE             YAML or JSON file of style -> persona adding to or overriding personas.yaml (unset)
  LR, BS, GA               learning rate, per-device batch size, gradient accumulation (5e-6, 2, 4)
USAGE
  sdpo_launch_usage
  sdpo_vllm_usage
  cat <<'USAGE'
  TRAIN_JSONL, VAL_JSONL   prompt files (./data/tldr_prompts_unique/{train,validation}.jsonl)
  TRAIN_N, EVAL_N          prompts used for training (256) and validation (unset: all)
  SEED                     seed of the prompt subset and of training (42)
  MAX_PROMPT_TOKENS        drop longer prompts, in chat-formatted tokens (512, the authors' filter)
  SYSTEM_PROMPT            policy system prompt: tldr or general (tldr)
  RECIPE                   YAML run settings passed with --config (recipes/tldr.yaml)
  SAVE_STEPS               save a checkpoint every this many steps (the recipe's save_steps: 3)
  RUN_ID                   run name (tldr-<style>-<date>-<time>)
  OUTPUT_DIR               checkpoints ($SCRATCH/sdpo-tldr-runs/<run-id>; without SCRATCH:
                           ./runs/sdpo-tldr-runs/<run-id> in the repository)
  RESUME_FROM_CHECKPOINT   checkpoint folder to resume from, or "last" for the newest in OUTPUT_DIR (unset)
  WANDB_PROJECT, WANDB_NAME  wandb project (sdpo-tldr) and run name (RUN_ID); offline without WANDB_API_KEY
  WANDB_DIR                where wandb writes its files: <WANDB_DIR>/wandb (OUTPUT_DIR)
  PYTHON                   python used when WORLD_SIZE=1 (python)
Options:
  --dry-run   print the settings, the schedule and the exact command, run nothing
  -h, --help  this help

With the variables as set now:
USAGE
  sdpo_schedule
}

EXPERIMENT=tldr
RUNS_SUBDIR=sdpo-tldr-runs
PREPARE_SCRIPT=scripts/prepare_data_tldr.sh
: "${MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${USER_MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${STYLE:=concise_casual_beginner}"
: "${LR:=5e-6}"
: "${BS:=2}"
: "${GA:=4}"
: "${WORLD_SIZE:=4}"
: "${TRAIN_JSONL:=$SDPO_ROOT/data/tldr_prompts_unique/train.jsonl}"
: "${VAL_JSONL:=$SDPO_ROOT/data/tldr_prompts_unique/validation.jsonl}"
: "${TRAIN_N:=256}"
: "${SEED:=42}"
: "${MAX_PROMPT_TOKENS:=512}"
: "${SYSTEM_PROMPT:=tldr}"
: "${RECIPE:=$SDPO_ROOT/recipes/tldr.yaml}"
: "${WANDB_PROJECT:=sdpo-tldr}"

sdpo_online_train local "$@"
