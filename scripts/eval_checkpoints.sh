#!/usr/bin/env bash
# Evaluate a HelpSteer2 run: the persona win rate of each checkpoint against the base model, judged by Claude
# Haiku playing the run's simulated user (needs ANTHROPIC_API_KEY). Every setting is an environment variable.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_eval_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/eval_checkpoints.sh [--dry-run] [-- extra evaluate_run.py arguments]

Win rate of a HelpSteer2 run's checkpoints against the base model, judged by Claude as the run's user
(needs ANTHROPIC_API_KEY). Writes win_rates.md/.csv, win_rate.png and judgments.jsonl to OUTPUT_DIR; a re-run
resumes and pays only for the pairs not judged yet.
Variables (default):
  RUN_DIR            the training run's OUTPUT_DIR, holding checkpoint-<N>/ (required)
  DATA_PATH          held-out prompts or conversations (./data/helpsteer2_prompts/validation.jsonl)
  CKPTS              checkpoint steps, e.g. "3 6" (unset: every complete checkpoint-<N> of RUN_DIR)
  BASELINE           baseline model (Qwen/Qwen3-8B)
  JUDGE_MODEL        Claude judge model (claude-haiku-4-5-20251001)
  JUDGE_API_BASE     an OpenAI-compatible server that judges instead of Claude, e.g. http://judgehost:8000/v1
                     (unset); its key, if any, from JUDGE_API_KEY (else OPENAI_API_KEY), never printed
  JUDGE_API_MODEL    the model name that server serves (required with JUDGE_API_BASE)
  JUDGE_PROTOCOL     how a verdict is read: letter (the judge writes A, B or C) or logprobs (the log-probabilities of
                     the labels, a tie within JUDGE_TIE_MARGIN nats, 0.1) (letter; logprobs needs JUDGE_API_BASE)
  EVAL_N             held-out prompts used (256)
  MAX_PROMPT_TOKENS  drop longer prompts, as in training (512)
  MAX_NEW_TOKENS     longest response, in tokens (unset: the run's max_completion_length)
  STYLE              judge persona (unset: the persona text each checkpoint was trained with; an offline run
                     stores none and needs it)
  PERSONA_FILE       YAML or JSON file of style -> persona, for STYLE (unset)
  ORACLE             1: also judge the in-context oracle (the baseline told the persona) against the baseline; 0: not
                     (1). A run trained with a persona schedule is judged under each of its personas unless STYLE is set
  WORLD_SIZE         number of GPUs (4); 1 runs plain python, more run accelerate launch
  ACCELERATE_CONFIG  accelerate config file used instead of --num_processes (unset)
  OUTPUT_DIR         where results go (unset: RUN_DIR/eval)
  PYTHON             python used when WORLD_SIZE=1 (python)
Options:
  --dry-run   print the settings and the exact command, run nothing
  -h, --help  this help
USAGE
}

sdpo_parse_args "$@"

if [[ -z "${JUDGE_API_BASE:-}" ]]; then
  sdpo_require_anthropic_key "The judge is Claude" "JUDGE_API_BASE, or scripts/eval_checkpoints_tldr.sh, whose judge runs locally"
fi

JUDGE=claude
PREPARE_SCRIPT=scripts/prepare_data_helpsteer.sh
: "${DATA_PATH:=$SDPO_ROOT/data/helpsteer2_prompts/validation.jsonl}"
: "${JUDGE_MODEL:=claude-haiku-4-5-20251001}"
: "${MAX_PROMPT_TOKENS:=512}"
sdpo_eval
