#!/usr/bin/env bash
# The simulated user as one shared OpenAI-compatible server: `vllm serve` of USER_MODEL_NAME_OR_PATH on its own
# GPUs, with data-parallel replicas and prefix caching (every request starts with the same persona prompt).
# The training scripts use it with USER_API_BASE instead of loading the user model on every policy GPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/serve_user_simulator.sh [--dry-run] [-- extra `vllm serve` arguments]

Starts `vllm serve` for the simulated user, waits until it answers /health, prints the USER_API_BASE and
USER_API_MODEL to train with, and keeps serving until stopped (Ctrl-C or SIGTERM stops the server too).
Variables (default):
  USER_MODEL_NAME_OR_PATH      user model (Qwen/Qwen3-8B)
  USER_API_MODEL               name it is served under (USER_MODEL_NAME_OR_PATH)
  USER_GPUS                    GPUs of the server, as CUDA_VISIBLE_DEVICES (4,5,6,7: beside 4 policy GPUs)
  USER_TP                      tensor-parallel GPUs per replica (1); replicas = GPUs in USER_GPUS / USER_TP
  HOST, PORT                   address to listen on (0.0.0.0, 8000)
  USER_MAX_MODEL_LEN           longest request + reply, in tokens (4096: persona, request, answer, reply)
  USER_GPU_MEMORY_UTILIZATION  share of each GPU vLLM may take (0.90)
  USER_API_KEY                 key the server requires (unset: none); passed as VLLM_API_KEY, never printed
  HEALTH_TIMEOUT               seconds to wait for the server to answer /health (900)
  VLLM                         vllm executable (vllm); install it with: pip install -r requirements-vllm.txt
  PYTHON                       python used to poll /health (python)
Options:
  --dry-run   print the settings and the exact command, run nothing
  -h, --help  this help
USAGE
}

: "${USER_MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${USER_API_MODEL:=$USER_MODEL_NAME_OR_PATH}"
: "${USER_GPUS:=4,5,6,7}"
: "${USER_TP:=1}"
: "${HOST:=0.0.0.0}"
: "${PORT:=8000}"
: "${USER_MAX_MODEL_LEN:=4096}"
: "${USER_GPU_MEMORY_UTILIZATION:=0.90}"
: "${HEALTH_TIMEOUT:=900}"
: "${VLLM:=vllm}"

sdpo_parse_args "$@"

sdpo_require_positive USER_TP PORT HEALTH_TIMEOUT
sdpo_replicas USER_GPUS USER_TP

echo "settings:"
sdpo_show USER_MODEL_NAME_OR_PATH USER_API_MODEL USER_GPUS USER_TP HOST PORT USER_MAX_MODEL_LEN \
  USER_GPU_MEMORY_UTILIZATION HEALTH_TIMEOUT VLLM
echo "  data-parallel replicas: $replicas (each on $USER_TP GPU(s))"
echo "credentials:"
sdpo_show_secrets USER_API_KEY HF_TOKEN

if ! command -v "$VLLM" >/dev/null 2>&1; then
  sdpo_missing "vLLM is not installed (no $(printf '%q' "$VLLM") command). On the simulator's GPU machine:" \
    "pip install -r requirements-vllm.txt (vllm 0.10.2, the version TRL 0.24 supports), or set VLLM."
fi
sdpo_export CUDA_VISIBLE_DEVICES "$USER_GPUS"
if [[ -n "${USER_API_KEY:-}" ]]; then export VLLM_API_KEY="$USER_API_KEY"; fi  # never on the command line

# --generation-config vllm: no sampling default comes from the model folder, so each request samples exactly as
# the trainer's --user_temperature/--user_top_p/--user_top_k say (top_k 0 sends none: then none applies).
cmd=("$VLLM" serve "$USER_MODEL_NAME_OR_PATH" --served-model-name "$USER_API_MODEL" --host "$HOST" --port "$PORT"
  --data-parallel-size "$replicas" --tensor-parallel-size "$USER_TP" --enable-prefix-caching
  --generation-config vllm --max-model-len "$USER_MAX_MODEL_LEN"
  --gpu-memory-utilization "$USER_GPU_MEMORY_UTILIZATION" "${PASSTHROUGH[@]}")
sdpo_print_command "${cmd[@]}"

sdpo_serve_until_stopped "http://127.0.0.1:$PORT/health" "user simulator" \
  USER_API_BASE "http://$(sdpo_reachable_host "$HOST"):$PORT/v1" USER_API_MODEL "$USER_API_MODEL"
