#!/usr/bin/env bash
# TRL's vLLM generation server for the policy (`trl vllm-serve`), on GPUs of its own, for USE_VLLM=server: the
# trainer sends it the prompts and, after every optimizer step, the new weights.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/serve_policy_vllm.sh [--dry-run] [-- extra `trl vllm-serve` arguments]

Starts `trl vllm-serve` for the policy, waits until it answers /health/, prints the VLLM_SERVER_URL to train with
(USE_VLLM=server), and keeps serving until stopped (Ctrl-C or SIGTERM stops the server too).
Variables (default):
  MODEL_NAME_OR_PATH           policy model, the same as training's (Qwen/Qwen3-8B)
  VLLM_GPUS                    GPUs of the server, as CUDA_VISIBLE_DEVICES (4,5,6,7: beside 4 training GPUs)
  VLLM_TP                      tensor-parallel GPUs per replica (1); replicas = GPUs in VLLM_GPUS / VLLM_TP
  HOST, PORT                   address to listen on (0.0.0.0, 8001)
  VLLM_MAX_MODEL_LEN           longest prompt + answer, in tokens (4608: the recipes' 512-token prompts + 2048-token
                               answers, with room for the chat template)
  VLLM_GPU_MEMORY_UTILIZATION  share of each GPU vLLM may take (0.90)
  HEALTH_TIMEOUT               seconds to wait for /health/ (900)
  TRL                          trl executable (trl); vLLM comes from: pip install -r requirements-vllm.txt
  PYTHON                       python used to poll /health/ (python)
Options:
  --dry-run   print the settings and the exact command, run nothing
  -h, --help  this help
USAGE
}

: "${MODEL_NAME_OR_PATH:=Qwen/Qwen3-8B}"
: "${VLLM_GPUS:=4,5,6,7}"
: "${VLLM_TP:=1}"
: "${HOST:=0.0.0.0}"
: "${PORT:=8001}"
: "${VLLM_MAX_MODEL_LEN:=4608}"
: "${VLLM_GPU_MEMORY_UTILIZATION:=0.90}"
: "${HEALTH_TIMEOUT:=900}"
: "${TRL:=trl}"

sdpo_parse_args "$@"
sdpo_require_positive VLLM_TP PORT HEALTH_TIMEOUT
sdpo_replicas VLLM_GPUS VLLM_TP

echo "settings:"
sdpo_show MODEL_NAME_OR_PATH VLLM_GPUS VLLM_TP HOST PORT VLLM_MAX_MODEL_LEN VLLM_GPU_MEMORY_UTILIZATION \
  HEALTH_TIMEOUT TRL
echo "  data-parallel replicas: $replicas (each on $VLLM_TP GPU(s))"
echo "credentials:"
sdpo_show_secrets HF_TOKEN

if ! "${PYTHON:-python}" -c 'import vllm' 2>/dev/null; then
  sdpo_missing "vLLM is not installed for $(printf '%q' "${PYTHON:-python}"). On the GPU machine:" \
    "pip install -r requirements-vllm.txt (vllm 0.10.2, the version TRL 0.24 supports)."
fi
sdpo_export CUDA_VISIBLE_DEVICES "$VLLM_GPUS"

cmd=("$TRL" vllm-serve --model "$MODEL_NAME_OR_PATH" --tensor_parallel_size "$VLLM_TP"
  --data_parallel_size "$replicas" --host "$HOST" --port "$PORT" --max_model_len "$VLLM_MAX_MODEL_LEN"
  --gpu_memory_utilization "$VLLM_GPU_MEMORY_UTILIZATION" --enable_prefix_caching true "${PASSTHROUGH[@]}")
sdpo_print_command "${cmd[@]}"

sdpo_serve_until_stopped "http://127.0.0.1:$PORT/health/" "policy vLLM server" \
  USE_VLLM server VLLM_SERVER_URL "http://$(sdpo_reachable_host "$HOST"):$PORT"
