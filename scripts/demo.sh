#!/usr/bin/env bash
# A short, real online SDPO run on the CPU: the embedded SmolLM2-135M-Instruct is both the policy and the
# simulated user (persona STYLE), on the 32 prompts of data/sample/. Writes under OUT_DIR (default runs/demo).
#   PYTHON (default .venv/bin/python), MODEL_DIR, OUT_DIR, STYLE, MAX_STEPS
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage() { echo "usage: [OUT_DIR=...] [STYLE=...] [MAX_STEPS=...] $0 [--dry-run]" >&2; }
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $arg" >&2; usage; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-$root/.venv/bin/python}
MODEL_DIR=${MODEL_DIR:-$root/models/smollm2-135m-instruct}
OUT_DIR=${OUT_DIR:-$root/runs/demo}
STYLE=${STYLE:-concise_casual_beginner}
MAX_STEPS=${MAX_STEPS:-8}

train=("$PYTHON" "$root/train.py"
  --train_jsonl "$root/data/sample/train.jsonl" --system_prompt tldr --style "$STYLE"
  --model_name_or_path "$MODEL_DIR" --user_model_name_or_path "$MODEL_DIR"
  --user_max_new_tokens 40 --user_temperature 0.7
  --output_dir "$OUT_DIR" --overwrite_output_dir true --max_steps "$MAX_STEPS"
  --per_device_train_batch_size 4 --gradient_accumulation_steps 1 --learning_rate 2e-5
  --max_prompt_length 384 --max_completion_length 48 --temperature 1.0
  --logging_steps 1 --save_steps 4 --token_log_samples 4 --seed 42
  --bf16 false --gradient_checkpointing false --report_to none --logging_dir "$OUT_DIR/logs")
heatmap=("$PYTHON" "$root/visualize_signal.py" log --token_log "$OUT_DIR/token_logps.jsonl" --out_dir "$OUT_DIR/signal")
report=("$PYTHON" "$root/scripts/demo_report.py" "$OUT_DIR")

if ((dry_run)); then
  for cmd in train heatmap report; do
    declare -n c=$cmd
    printf '%q ' "${c[@]}"; echo
  done
  exit 0
fi
rm -f "$OUT_DIR/token_logps.jsonl"
"${train[@]}"
"${report[@]}"
"${heatmap[@]}"
