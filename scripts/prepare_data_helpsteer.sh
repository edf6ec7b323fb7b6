#!/usr/bin/env bash
# Write train.jsonl and validation.jsonl of single-turn prompts from nvidia/HelpSteer2, once, before training.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/prepare_data_helpsteer.sh [--dry-run] [-- extra prepare_data.py arguments]

Writes train.jsonl and validation.jsonl of single-turn prompts from nvidia/HelpSteer2.
Variables (default):
  OUT_DIR      output folder (./data/helpsteer2_prompts in the repository)
  DATA_SOURCE  local copy of the dataset to read instead of the Hub: a save_to_disk folder, or a folder of
               parquet/JSON files named by split (unset: download from the Hub)
  PYTHON       python to run prepare_data.py with (python)
Options:
  --dry-run   print the settings and the exact command, run nothing
  -h, --help  this help
USAGE
}

sdpo_parse_args "$@"

: "${OUT_DIR:=$SDPO_ROOT/data/helpsteer2_prompts}"
echo "settings:"
sdpo_show OUT_DIR DATA_SOURCE
echo "credentials:"
sdpo_show_secrets HF_TOKEN

cmd=("${PYTHON:-python}" "$SDPO_ROOT/prepare_data.py" helpsteer --out_dir "$OUT_DIR")
if [[ -n "${DATA_SOURCE:-}" ]]; then
  sdpo_require_dir DATA_SOURCE "a save_to_disk folder, or a folder of parquet/JSON files named by split"
  cmd+=(--source "$DATA_SOURCE")
fi
sdpo_print_and_run "${cmd[@]}" "${PASSTHROUGH[@]}"
