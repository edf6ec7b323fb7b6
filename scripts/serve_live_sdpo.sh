#!/usr/bin/env bash
# Serve a policy to real users and learn from their follow-ups: an OpenAI-compatible server and a web chat page on
# one port, whose users' reactions train a LoRA adapter in the background (docs/live.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/serve_live_sdpo.sh [--dry-run] [-- extra serve_live arguments]

Starts the live SDPO server, prints its web chat and OpenAI URLs, and serves until stopped (Ctrl-C or SIGTERM;
a restart resumes from DATA_DIR). Every serve_live flag (python -m sdpo_interactions.cli.serve_live --help) can
follow `--`, e.g. -- --distillation_mode topk_logits --monitor_min_specificity 0.01.
Variables (default):
  MODEL_NAME_OR_PATH           policy model (models/smollm2-135m-instruct, the embedded model: make model)
  ADAPTER_PATH                 LoRA adapter to start from (unset: a new adapter, which leaves the model unchanged)
  DATA_DIR                     SQLite store and adapter versions ($SCRATCH/live, else runs/live in the repository)
  HOST, PORT                   address to listen on (127.0.0.1, 8000; 0.0.0.0 listens on every interface)
  SERVED_MODEL_NAME            model name the API lists (sdpo-live)
  DEVICE                       auto (a GPU if there is one), cpu or cuda:N (auto)
  PER_USER_ADAPTERS            true: each user id trains and is served by its own adapter (false)
  SAMPLES_PER_UPDATE           samples per update, one optimizer step each (4)
  MIN_SECONDS_BETWEEN_UPDATES  the update-rate cap per adapter (10)
  LR                           AdamW learning rate (1e-5, the authors' live updater)
  MAX_COMPLETION_TOKENS        longest answer, and the ceiling of a request's max_tokens (512)
  PYTHON                       python to run the server with (python)
Credentials (from the environment only; never printed, logged or saved):
  LIVE_API_KEY                 bearer key of the chat API and the web page (at least 16 characters)
  LIVE_ADMIN_KEY               bearer key of /admin/* (another value)
Options:
  --dry-run   print the settings, the URLs and the exact command, run nothing
  -h, --help  this help
USAGE
}

: "${MODEL_NAME_OR_PATH:=$SDPO_ROOT/models/smollm2-135m-instruct}"
: "${HOST:=127.0.0.1}"
: "${PORT:=8000}"
: "${SERVED_MODEL_NAME:=sdpo-live}"
: "${DEVICE:=auto}"
: "${PER_USER_ADAPTERS:=false}"
: "${SAMPLES_PER_UPDATE:=4}"
: "${MIN_SECONDS_BETWEEN_UPDATES:=10}"
: "${LR:=1e-5}"
: "${MAX_COMPLETION_TOKENS:=512}"
if [[ -z "${DATA_DIR:-}" ]]; then
  if [[ -n "${SCRATCH:-}" ]]; then DATA_DIR="$SCRATCH/live"; else DATA_DIR="$SDPO_ROOT/runs/live"; fi
fi

sdpo_parse_args "$@"
sdpo_require_positive PORT SAMPLES_PER_UPDATE MAX_COMPLETION_TOKENS
if [[ "$PER_USER_ADAPTERS" != true && "$PER_USER_ADAPTERS" != false ]]; then
  sdpo_usage_error "PER_USER_ADAPTERS must be true or false, got $(sdpo_quote "$PER_USER_ADAPTERS")"
fi

echo "settings:"
sdpo_show MODEL_NAME_OR_PATH ADAPTER_PATH DATA_DIR HOST PORT SERVED_MODEL_NAME DEVICE PER_USER_ADAPTERS \
  SAMPLES_PER_UPDATE MIN_SECONDS_BETWEEN_UPDATES LR MAX_COMPLETION_TOKENS
echo "credentials:"
sdpo_show_secrets LIVE_API_KEY LIVE_ADMIN_KEY HF_TOKEN

if [[ "$MODEL_NAME_OR_PATH" == /* || "$MODEL_NAME_OR_PATH" == .* ]]; then
  sdpo_require_dir MODEL_NAME_OR_PATH "the embedded model is made by: make model"
fi
if [[ -n "${ADAPTER_PATH:-}" ]]; then sdpo_require_dir ADAPTER_PATH "a PEFT adapter folder"; fi
for key in LIVE_API_KEY LIVE_ADMIN_KEY; do
  if [[ -z "${!key:-}" ]]; then sdpo_missing "$key is not set: export $key=<a long random string> first"; fi
done

url="http://$(sdpo_reachable_host "$HOST"):$PORT"
echo "web chat: $url/"
echo "OpenAI base URL: $url/v1 (model $SERVED_MODEL_NAME, api_key \$LIVE_API_KEY; the request's user names the user)"
echo "metrics: $url/metrics; admin: $url/admin/status (bearer \$LIVE_ADMIN_KEY)"

cmd=("${PYTHON:-python}" -m sdpo_interactions.cli.serve_live --model_name_or_path "$MODEL_NAME_OR_PATH"
  --data_dir "$DATA_DIR" --host "$HOST" --port "$PORT" --served_model_name "$SERVED_MODEL_NAME" --device "$DEVICE"
  --per_user_adapters "$PER_USER_ADAPTERS" --samples_per_update "$SAMPLES_PER_UPDATE"
  --min_seconds_between_updates "$MIN_SECONDS_BETWEEN_UPDATES" --learning_rate "$LR"
  --max_completion_tokens "$MAX_COMPLETION_TOKENS")
if [[ -n "${ADAPTER_PATH:-}" ]]; then cmd+=(--adapter_path "$ADAPTER_PATH"); fi
cmd+=("${PASSTHROUGH[@]}")
sdpo_print_and_run "${cmd[@]}"
