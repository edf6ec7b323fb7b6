# shellcheck shell=bash
# The evaluation launch shared by eval_checkpoints.sh (Claude judge) and eval_checkpoints_tldr.sh (local judge).
# Sourced after _common.sh, whose option parsing, printing, checks and launcher it uses. The caller sets JUDGE,
# DATA_PATH, JUDGE_MODEL, MAX_PROMPT_TOKENS and PREPARE_SCRIPT, then calls sdpo_eval. With JUDGE_API_BASE set, one
# OpenAI-compatible server (a vLLM-served Qwen3-8B, say) judges instead, as JUDGE_API_MODEL. ORACLE=0 leaves out the
# in-context oracle; JUDGE_PROTOCOL=logprobs (a local or served judge) reads the labels' log-probabilities.

sdpo_eval() {
  : "${CKPTS:=}"
  : "${BASELINE:=Qwen/Qwen3-8B}"
  : "${EVAL_N:=256}"
  : "${WORLD_SIZE:=4}"
  : "${ORACLE:=1}"

  local judge_args=(--judge "$JUDGE" --judge_model "$JUDGE_MODEL")
  if [[ -n "${JUDGE_API_BASE:-}" ]]; then
    if [[ -z "${JUDGE_API_MODEL:-}" ]]; then
      sdpo_usage_error "JUDGE_API_BASE is set but JUDGE_API_MODEL is not: set it to the model name the server serves"
    fi
    JUDGE=openai JUDGE_MODEL=$JUDGE_API_MODEL
    judge_args=(--judge openai --judge_api_base "$JUDGE_API_BASE" --judge_api_model "$JUDGE_API_MODEL")
  fi

  echo "settings:"
  sdpo_show RUN_DIR DATA_PATH CKPTS BASELINE JUDGE JUDGE_MODEL JUDGE_API_BASE JUDGE_API_MODEL JUDGE_PROTOCOL \
    JUDGE_TIE_MARGIN EVAL_N MAX_PROMPT_TOKENS MAX_NEW_TOKENS STYLE PERSONA_FILE ORACLE WORLD_SIZE ACCELERATE_CONFIG \
    OUTPUT_DIR
  echo "credentials:"
  sdpo_show_secrets ANTHROPIC_API_KEY JUDGE_API_KEY HF_TOKEN

  local steps step
  read -r -a steps <<<"$CKPTS"
  for step in "${steps[@]}"; do
    [[ "$step" =~ ^[0-9]+$ ]] ||
      sdpo_usage_error "CKPTS must hold checkpoint steps (integers), got $(printf '%q' "$step")"
  done
  [[ "$EVAL_N" =~ ^[1-9][0-9]*$ ]] || sdpo_usage_error "EVAL_N must be a positive integer, got $(printf '%q' "$EVAL_N")"
  if [[ -n "${MAX_NEW_TOKENS:-}" ]]; then sdpo_require_positive MAX_NEW_TOKENS; fi
  [[ "$ORACLE" =~ ^[01]$ ]] || sdpo_usage_error "ORACLE must be 1 (judge the in-context oracle) or 0, got $(sdpo_quote "$ORACLE")"
  case "${JUDGE_PROTOCOL:-}" in
    "" | letter | logprobs) ;;
    *) sdpo_usage_error "JUDGE_PROTOCOL must be letter or logprobs, got $(sdpo_quote "$JUDGE_PROTOCOL")" ;;
  esac
  if [[ -z "${RUN_DIR:-}" ]]; then
    sdpo_missing "RUN_DIR is not set: the OUTPUT_DIR of a training run, holding checkpoint-<N>/ folders"
  else
    sdpo_require_dir RUN_DIR "the OUTPUT_DIR of a training run"
  fi
  sdpo_require_file DATA_PATH "make it with $PREPARE_SCRIPT"
  sdpo_launcher

  # Without CKPTS, evaluate_run.py takes every complete checkpoint of the run, however many steps it had.
  local cmd=("${LAUNCHER[@]}" "$SDPO_ROOT/evaluate_run.py" --run_dir "${RUN_DIR:-}")
  if ((${#steps[@]})); then cmd+=(--ckpts "${steps[@]}"); fi
  cmd+=(--data_path "$DATA_PATH" --eval_n "$EVAL_N" --max_prompt_tokens "$MAX_PROMPT_TOKENS" --baseline "$BASELINE"
    "${judge_args[@]}")
  if [[ -n "${MAX_NEW_TOKENS:-}" ]]; then cmd+=(--max_new_tokens "$MAX_NEW_TOKENS"); fi
  if [[ -n "${JUDGE_PROTOCOL:-}" ]]; then cmd+=(--judge_protocol "$JUDGE_PROTOCOL"); fi
  if [[ -n "${JUDGE_TIE_MARGIN:-}" ]]; then cmd+=(--judge_tie_margin "$JUDGE_TIE_MARGIN"); fi
  if ((ORACLE == 0)); then cmd+=(--oracle false); fi
  if [[ -n "${STYLE:-}" ]]; then cmd+=(--style "$STYLE"); fi
  if [[ -n "${PERSONA_FILE:-}" ]]; then cmd+=(--persona_file "$PERSONA_FILE"); fi
  if [[ -n "${OUTPUT_DIR:-}" ]]; then cmd+=(--output_dir "$OUTPUT_DIR"); fi
  cmd+=("${PASSTHROUGH[@]}")
  sdpo_print_and_run "${cmd[@]}"
}
