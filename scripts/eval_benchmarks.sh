#!/usr/bin/env bash
# The paper's benchmark table for a run (offline SDPO's headline evaluation): the base model and every complete
# checkpoint on IFEval, MMLU-Pro, AlpacaEval 2 LC and the regression checks, through lm-eval and alpaca-eval
# (the eval extra: pip install -r requirements-eval.txt). Every setting is an environment variable.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: [VAR=value ...] scripts/eval_benchmarks.sh [--dry-run] [-- extra eval_benchmarks arguments]

Benchmarks a run's base model and checkpoints (LoRA adapters too) through lm-eval and alpaca-eval, with the chat
template settings each was trained with. Writes benchmarks.md/.csv/.png to OUTPUT_DIR, and per model and benchmark
the harness's raw output, its log and result.json; a re-run skips what is already computed.
Variables (default):
  RUN_DIR              the training run's OUTPUT_DIR, holding checkpoint-<N>/ (required)
  BENCHMARKS           any of: alpaca_eval ifeval mmlu_pro truthfulqa hellaswag commonsense_qa (all of them)
  CKPTS                checkpoint steps, e.g. "100 200" (unset: every complete checkpoint-<N> of RUN_DIR)
  BASE_MODEL           the base model (unset: model_name_or_path in the run's sdpo_run_settings.json)
  BACKEND              generation: hf, vllm, or auto = vllm where HARNESS_PYTHON has vllm >= 0.18 (auto)
  DTYPE                weights dtype: auto, bfloat16, float16, float32 (auto)
  BATCH_SIZE           generation batch size (8)
  VLLM_TP              vLLM tensor-parallel size (1)
  LIMIT                only the first N documents per task: a smoke test, not a benchmark number (unset)
  ANNOTATOR_MODEL      AlpacaEval's judge (gpt-4-1106-preview, AlpacaEval 2.0's GPT-4 Turbo)
  ANNOTATOR_API_BASE   OpenAI-compatible URL of the judge, e.g. a vLLM server's http://host:8000/v1 (unset: OpenAI)
  ANNOTATOR_API_KEY    the judge's key (falls back to OPENAI_API_KEY); never printed or saved
  IFEVAL_DATA          local copy of google/IFEval (JSONL) instead of the Hub's (unset)
  ALPACA_EVAL_DATA     local AlpacaEval set with reference outputs (JSON) instead of the Hub's (unset)
  OUTPUT_DIR           where results go (unset: RUN_DIR/benchmarks)
  PYTHON               python of the training environment, with the eval extra (python)
  HARNESS_PYTHON       python that runs the harnesses (unset: PYTHON); for BACKEND=vllm an environment made from
                       requirements-eval-vllm.txt
Options:
  --dry-run   print the settings and each harness's exact command, run nothing
  -h, --help  this help
USAGE
}

sdpo_parse_args "$@"

: "${BENCHMARKS:=alpaca_eval ifeval mmlu_pro truthfulqa hellaswag commonsense_qa}"
: "${BACKEND:=auto}" "${DTYPE:=auto}" "${BATCH_SIZE:=8}" "${VLLM_TP:=1}"
: "${ANNOTATOR_MODEL:=gpt-4-1106-preview}"

echo "settings:"
sdpo_show RUN_DIR BENCHMARKS CKPTS BASE_MODEL BACKEND DTYPE BATCH_SIZE VLLM_TP LIMIT ANNOTATOR_MODEL ANNOTATOR_API_BASE \
  IFEVAL_DATA ALPACA_EVAL_DATA OUTPUT_DIR HARNESS_PYTHON
echo "credentials:"
sdpo_show_secrets ANNOTATOR_API_KEY OPENAI_API_KEY HF_TOKEN

sdpo_require_positive BATCH_SIZE VLLM_TP
if [[ -n "${LIMIT:-}" ]]; then sdpo_require_positive LIMIT; fi
read -r -a benchmarks <<<"$BENCHMARKS"
read -r -a steps <<<"${CKPTS:-}"
for step in "${steps[@]}"; do
  [[ "$step" =~ ^[0-9]+$ ]] || sdpo_usage_error "CKPTS must hold checkpoint steps (integers), got $(printf '%q' "$step")"
done
if [[ -z "${RUN_DIR:-}" ]]; then
  sdpo_missing "RUN_DIR is not set: the OUTPUT_DIR of a training run, holding checkpoint-<N>/ folders"
else
  sdpo_require_dir RUN_DIR "the OUTPUT_DIR of a training run"
fi
for name in IFEVAL_DATA ALPACA_EVAL_DATA; do
  if [[ -n "${!name:-}" ]]; then sdpo_require_file "$name" "a local copy of the benchmark's data"; fi
done

cmd=("${PYTHON:-python}" -m sdpo_interactions.cli.eval_benchmarks --run_dir "${RUN_DIR:-}" --benchmarks
  "${benchmarks[@]}" --backend "$BACKEND" --dtype "$DTYPE" --batch_size "$BATCH_SIZE" --tensor_parallel_size "$VLLM_TP"
  --annotator_model "$ANNOTATOR_MODEL")
if ((${#steps[@]})); then cmd+=(--ckpts "${steps[@]}"); fi
for pair in BASE_MODEL:base_model LIMIT:limit ANNOTATOR_API_BASE:annotator_api_base IFEVAL_DATA:ifeval_data \
  ALPACA_EVAL_DATA:alpaca_eval_data OUTPUT_DIR:output_dir HARNESS_PYTHON:harness_python; do
  name=${pair%%:*}
  if [[ -n "${!name:-}" ]]; then cmd+=("--${pair#*:}" "${!name}"); fi
done
cmd+=("${PASSTHROUGH[@]}")

if ((DRY_RUN)); then
  # The harness commands depend on the run's checkpoints: the planner prints them, and runs none.
  echo "command:"
  printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; printf '\n'
  if [[ -d "${RUN_DIR:-}" ]] && "${cmd[@]}" --dry_run true; then exit 0; fi
  sdpo_warn "the harness commands could not be listed (RUN_DIR missing, or the planner's error above)"
  echo "dry run: nothing was executed"
  exit 0
fi
sdpo_print_and_run "${cmd[@]}"
