#!/usr/bin/env bash
# A short, real offline SDPO run on the CPU: the embedded SmolLM2-135M-Instruct learns from the 6 hand-written
# conversations of data/sample/conversations.jsonl. `make demo-offline` runs it after building .venv and the model.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/demo_offline.sh [--dry-run] [-- extra train_offline.py arguments]

Variables (default):
  OUT_DIR    run folder (./runs/demo-offline)
  MAX_STEPS  optimizer steps, 2 samples each (4)
  MODEL_DIR  policy model (./models/smollm2-135m-instruct)
  PYTHON     python with the requirements installed (./.venv/bin/python)
USAGE
}

sdpo_parse_args "$@"
: "${PYTHON:=$SDPO_ROOT/.venv/bin/python}"
: "${MODEL_DIR:=$SDPO_ROOT/models/smollm2-135m-instruct}"
: "${OUT_DIR:=$SDPO_ROOT/runs/demo-offline}"
: "${MAX_STEPS:=4}"

train=("$PYTHON" "$SDPO_ROOT/train_offline.py" --train_jsonl "$SDPO_ROOT/data/sample/conversations.jsonl"
  --model_name_or_path "$MODEL_DIR" --output_dir "$OUT_DIR" --overwrite_output_dir true --max_steps "$MAX_STEPS"
  --per_device_train_batch_size 2 --gradient_accumulation_steps 1 --learning_rate 2e-5
  --max_prompt_length 512 --max_completion_length 256 --logging_steps 1 --save_steps 2 --token_log_samples 2
  --seed 42 --bf16 false --gradient_checkpointing false --report_to none "${PASSTHROUGH[@]}")
heatmap=("$PYTHON" "$SDPO_ROOT/visualize_signal.py" log --token_log "$OUT_DIR/token_logps.jsonl"
  --output_dir "$OUT_DIR/signal")
report=("$PYTHON" "$SDPO_ROOT/scripts/demo_report.py" "$OUT_DIR")

echo "settings:"
sdpo_show OUT_DIR MAX_STEPS MODEL_DIR PYTHON
sdpo_run_demo train heatmap report
