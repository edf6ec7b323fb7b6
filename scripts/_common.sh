# shellcheck shell=bash
# Shared by the scripts in scripts/ (sourced, never run): option parsing, printing, checks, the launcher and the
# train.py command both training scripts build. Commands are bash arrays, printed with sdpo_quote (pasteable) and never
# re-parsed by the shell.
# Secrets (ANTHROPIC_API_KEY, USER_API_KEY, WANDB_API_KEY, HF_TOKEN) are only ever reported as "set" or "not set".

SDPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SDPO_SCRIPT="$(basename "$0")"
DRY_RUN=0
PASSTHROUGH=()
EXPORTED=()

# One word as a shell reads it back: bare when it holds only characters no shell treats specially (the set Python's
# shlex.quote leaves bare), else in single quotes with each ' inside written '\''. So 4,5,6,7 prints as it is
# and "2 6" as '2 6', where printf %q wrote 4\,5\,6\,7 and 2\ 6.
sdpo_quote() {
  local safe='^[A-Za-z0-9_@%+=:,./-]+$'
  if [[ "$1" =~ $safe ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# The words quoted and joined by spaces, one line: a command to paste.
sdpo_quote_words() {
  local word sep=""
  for word in "$@"; do printf '%s' "$sep"; sdpo_quote "$word"; sep=" "; done
  printf '\n'
}

sdpo_die() { printf 'error: %s\n' "$*" >&2; exit 1; }
sdpo_usage_error() { printf '%s: %s\n' "$SDPO_SCRIPT" "$*" >&2; usage >&2; exit 2; }
sdpo_warn() { printf 'warning: %s\n' "$*" >&2; }

# Options before `--` belong to the script; everything after it goes to the Python program untouched.
sdpo_parse_args() {
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      --) shift; PASSTHROUGH=("$@"); return 0 ;;
      *) sdpo_usage_error "unknown option: $(sdpo_quote "$1") (arguments for the Python program go after --)" ;;
    esac
    shift
  done
}

sdpo_secret_state() { if [[ -n "${!1:-}" ]]; then echo "set"; else echo "not set"; fi; }

# Print NAME=value for each variable, shell-quoted so a line can be pasted back as an assignment.
sdpo_show() {
  local name
  for name in "$@"; do printf '  %s=%s\n' "$name" "$(sdpo_quote "${!name-}")"; done
}

sdpo_show_secrets() {
  local name
  for name in "$@"; do printf '  %s: %s\n' "$name" "$(sdpo_secret_state "$name")"; done
}

# A missing input stops a real run before anything starts; a dry run only warns.
sdpo_missing() {
  if ((DRY_RUN)); then sdpo_warn "$*"; else sdpo_die "$*"; fi
}

# Claude needs ANTHROPIC_API_KEY: a real run stops before launching anything, a dry run only warns.
sdpo_require_anthropic_key() {
  if [[ -n "${ANTHROPIC_API_KEY:-}" ]]; then return 0; fi
  if ((DRY_RUN)); then
    sdpo_warn "ANTHROPIC_API_KEY is not set: a real run stops here"
  else
    sdpo_die "ANTHROPIC_API_KEY is not set. $1: export ANTHROPIC_API_KEY=... first (or use $2). Nothing was launched."
  fi
}

sdpo_require_file() {
  local name=$1 hint=$2
  if [[ ! -f "${!name}" ]]; then sdpo_missing "$name: no such file: ${!name}${hint:+ ($hint)}"; fi
}

sdpo_require_dir() {
  local name=$1 hint=$2
  if [[ ! -d "${!name}" ]]; then sdpo_missing "$name: no such folder: ${!name}${hint:+ ($hint)}"; fi
}

sdpo_export() {
  export "$1=$2"
  EXPORTED+=("$1")
}

# Print the exported variables and the command (pasteable as they are); a dry run ends here.
sdpo_print_command() {
  local name
  if ((${#EXPORTED[@]})); then
    echo "environment:"
    for name in "${EXPORTED[@]}"; do printf '  export %s=%s\n' "$name" "$(sdpo_quote "${!name}")"; done
  fi
  echo "command:"
  sdpo_quote_words "$@"
  if ((DRY_RUN)); then
    echo "dry run: nothing was executed"
    exit 0
  fi
}

sdpo_print_and_run() {
  sdpo_print_command "$@"
  exec "$@"
}

sdpo_require_positive() {
  local name
  for name in "$@"; do
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || sdpo_usage_error "$name must be a positive integer, got $(sdpo_quote "${!name}")"
  done
}

# replicas = the GPUs listed in the variable named $1 / the tensor-parallel size in the variable named $2.
sdpo_replicas() {
  local gpus=$1 tp=$2 gpu_list
  IFS=, read -r -a gpu_list <<<"${!gpus}"
  if ((${#gpu_list[@]} == 0 || ${#gpu_list[@]} % ${!tp})); then
    sdpo_usage_error "$gpus=${!gpus} holds ${#gpu_list[@]} GPUs, not a multiple of $tp=${!tp}"
  fi
  replicas=$((${#gpu_list[@]} / ${!tp}))
}

# The address other machines reach a server on: HOST itself, or this machine's name when it listens on all.
sdpo_reachable_host() {
  if [[ "$1" == "0.0.0.0" ]]; then hostname -f 2>/dev/null || hostname; else printf '%s\n' "$1"; fi
}

# Run the server command in "${cmd[@]}" (already printed) until this script is stopped, which stops it too; once
# HEALTH_URL answers, print the NAME=value pairs to train with. A server that exits first, or is not healthy
# within HEALTH_TIMEOUT seconds, is an error.
sdpo_serve_until_stopped() {
  local health=$1 what=$2 server status deadline=$((SECONDS + HEALTH_TIMEOUT))
  shift 2
  "${cmd[@]}" &
  server=$!
  # The script's own exit status survives stopping the server (a failed `wait` must not replace it).
  trap 'status=$?; kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; exit "$status"' INT TERM EXIT
  until "${PYTHON:-python}" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
    "$health" 2>/dev/null; do
    if ! kill -0 "$server" 2>/dev/null; then
      wait "$server" && status=0 || status=$?
      trap - EXIT
      sdpo_die "the server exited (status $status) before it answered $health; its output is above"
    fi
    if ((SECONDS >= deadline)); then sdpo_die "no answer from $health after HEALTH_TIMEOUT=$HEALTH_TIMEOUT s"; fi
    sleep 2
  done
  echo "$what ready; train with:"
  printf ' '
  while (($#)); do printf ' %s=%s' "$1" "$(sdpo_quote "$2")"; shift 2; done
  printf '\n'
  wait "$server"
}

# ACCELERATE_CONFIG may name one of the configs shipped at the repository root instead of giving a path.
declare -A SDPO_ACCELERATE_CONFIGS=(
  [ddp]=multigpu_accelerate_config.yaml
  [zero2]=deepspeed_zero2_accelerate_config.yaml
  [zero3]=deepspeed_zero3_accelerate_config.yaml
  [fsdp]=fsdp_accelerate_config.yaml
)

# The launch variables every training and evaluation script takes, for their usage texts.
sdpo_launch_usage() {
  cat <<'USAGE'
  WORLD_SIZE               processes = GPUs over all machines (4); 1 runs plain python, more run accelerate launch
  ACCELERATE_CONFIG        accelerate config: ddp, zero2, zero3, fsdp (the files at the repository root) or a path
                           (unset: accelerate's defaults, plain data parallel)
  NUM_MACHINES             machines of a multi-node run (1); run the script once on each, with its MACHINE_RANK
  MACHINE_RANK             this machine's rank, 0 on the main one (0)
  MAIN_PROCESS_IP          address of machine 0 as the others reach it (needed when NUM_MACHINES > 1)
  MAIN_PROCESS_PORT        a free port there (29500)
USAGE
}

sdpo_vllm_usage() {
  cat <<'USAGE'
  USE_VLLM                 generate with vLLM: colocate (in each training process) or server (unset: transformers)
  VLLM_GPU_MEMORY_UTILIZATION, VLLM_TP  colocate: share of each GPU for vLLM (0.3), tensor-parallel size (1)
  VLLM_SERVER_URL          server: the URL scripts/serve_policy_vllm.sh prints
USAGE
}

# WORLD_SIZE=1 runs plain python; more processes go through accelerate launch, with the named or given
# ACCELERATE_CONFIG, and across NUM_MACHINES machines. WORLD_SIZE always sets --num_processes, so the schedule the
# script prints is the one that runs, whatever the config file's num_processes says.
sdpo_launcher() {
  : "${NUM_MACHINES:=1}" "${MACHINE_RANK:=0}" "${MAIN_PROCESS_PORT:=29500}"
  sdpo_require_positive WORLD_SIZE NUM_MACHINES MAIN_PROCESS_PORT
  if [[ ! "$MACHINE_RANK" =~ ^[0-9]+$ ]] || ((MACHINE_RANK >= NUM_MACHINES)); then
    sdpo_usage_error "MACHINE_RANK must be 0 to $((NUM_MACHINES - 1)) for NUM_MACHINES=$NUM_MACHINES, got $(sdpo_quote "$MACHINE_RANK")"
  fi
  if ((WORLD_SIZE == 1)); then
    if ((NUM_MACHINES > 1)); then sdpo_usage_error "NUM_MACHINES=$NUM_MACHINES needs WORLD_SIZE > 1"; fi
    if [[ -n "${ACCELERATE_CONFIG:-}" ]]; then
      sdpo_warn "WORLD_SIZE=1: ACCELERATE_CONFIG is ignored (plain python, one process)"
    fi
    LAUNCHER=("${PYTHON:-python}")
    return 0
  fi
  LAUNCHER=(accelerate launch)
  if [[ -n "${ACCELERATE_CONFIG:-}" ]]; then
    if [[ -n "${SDPO_ACCELERATE_CONFIGS[$ACCELERATE_CONFIG]:-}" ]]; then
      ACCELERATE_CONFIG=$SDPO_ROOT/${SDPO_ACCELERATE_CONFIGS[$ACCELERATE_CONFIG]}
    fi
    sdpo_require_file ACCELERATE_CONFIG "ddp, zero2, zero3, fsdp, or an accelerate config file"
    LAUNCHER+=(--config_file "$ACCELERATE_CONFIG")
  fi
  LAUNCHER+=(--num_processes "$WORLD_SIZE")
  if ((NUM_MACHINES > 1)); then
    if [[ -z "${MAIN_PROCESS_IP:-}" ]]; then
      sdpo_usage_error "NUM_MACHINES=$NUM_MACHINES needs MAIN_PROCESS_IP, the address of machine 0"
    fi
    if ((WORLD_SIZE % NUM_MACHINES)); then
      sdpo_usage_error "WORLD_SIZE=$WORLD_SIZE (processes over all machines) is not a multiple of NUM_MACHINES=$NUM_MACHINES"
    fi
    LAUNCHER+=(--num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP"
      --main_process_port "$MAIN_PROCESS_PORT")
  fi
}

# USE_VLLM=colocate generates with vLLM inside each training process (sharing its GPU), USE_VLLM=server asks the
# `trl vllm-serve` of scripts/serve_policy_vllm.sh; either way with the sampling of the recipe and flags.
sdpo_vllm() {
  VLLM_ARGS=()
  case "${USE_VLLM:-}" in
    "") return 0 ;;
    colocate)
      : "${VLLM_GPU_MEMORY_UTILIZATION:=0.3}" "${VLLM_TP:=1}"
      sdpo_require_positive VLLM_TP
      if ((WORLD_SIZE % VLLM_TP)); then sdpo_usage_error "WORLD_SIZE=$WORLD_SIZE is not a multiple of VLLM_TP=$VLLM_TP"; fi
      VLLM_ARGS=(--use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization "$VLLM_GPU_MEMORY_UTILIZATION"
        --vllm_tensor_parallel_size "$VLLM_TP")
      ;;
    server)
      if [[ -z "${VLLM_SERVER_URL:-}" ]]; then
        sdpo_usage_error "USE_VLLM=server needs VLLM_SERVER_URL, printed by scripts/serve_policy_vllm.sh"
      fi
      VLLM_ARGS=(--use_vllm true --vllm_mode server --vllm_server_base_url "$VLLM_SERVER_URL")
      ;;
    *) sdpo_usage_error "USE_VLLM must be colocate or server (or unset: transformers generates), got $(sdpo_quote "$USE_VLLM")" ;;
  esac
}

# wandb writes its files into the run folder, <OUTPUT_DIR>/wandb (WANDB_DIR, unless it is set), not the current
# folder. With WANDB_API_KEY the run reports to wandb online; without it wandb runs offline (unless WANDB_MODE says
# otherwise), so a missing key never crashes a run and the logs can be uploaded later with `wandb sync`.
sdpo_wandb() {
  sdpo_export WANDB_PROJECT "$WANDB_PROJECT"
  sdpo_export WANDB_DIR "${WANDB_DIR:-$OUTPUT_DIR}"
  if [[ -z "${WANDB_API_KEY:-}" && -z "${WANDB_MODE:-}" ]]; then
    sdpo_export WANDB_MODE offline
    echo "WANDB_API_KEY is not set: wandb runs offline (upload later with: wandb sync $(sdpo_quote "$WANDB_DIR/wandb")/offline-run-*)"
  fi
}

# The step schedule these variables give, with the flags after -- and the recipe under them: steps, interactions and
# checkpoint steps, computed by sdpo_interactions.schedule, the code the run logs its own schedule with.
sdpo_schedule() {
  local samples=prompts
  if [[ "${ENTRY:-}" == train_offline.py ]]; then samples=samples; fi
  local args=(--world_size "$WORLD_SIZE" --samples_name "$samples" --config "$RECIPE"
    --per_device_train_batch_size "$BS" --gradient_accumulation_steps "$GA")
  if [[ -n "${TRAIN_N:-}" ]]; then args+=(--train_n "$TRAIN_N"); fi
  if [[ -n "${SAVE_STEPS:-}" ]]; then args+=(--save_steps "$SAVE_STEPS"); fi
  "${PYTHON:-python}" -m sdpo_interactions.schedule "${args[@]}" "${PASSTHROUGH[@]}" ||
    echo "schedule: n/a ($(sdpo_quote "${PYTHON:-python}") -m sdpo_interactions.schedule failed: see above)"
  if [[ -n "${STYLE_SCHEDULE:-}" ]]; then  # the persona of each step and the switch points; status 2: a bad schedule
    local status=0
    if [[ -n "${PERSONA_FILE:-}" ]]; then args+=(--persona_file "$PERSONA_FILE"); fi
    "${PYTHON:-python}" -m sdpo_interactions.users.style_schedule --style_schedule "$STYLE_SCHEDULE" "${args[@]}" \
      "${PASSTHROUGH[@]}" || status=$?
    if ((status == 2)); then sdpo_die "STYLE_SCHEDULE=$(sdpo_quote "$STYLE_SCHEDULE") cannot run (see above)"; fi
    if ((status)); then echo "persona schedule: n/a (the style_schedule module failed: see above)"; fi
  fi
}

# The precision this launch trains in and what keeps updates smaller than a bf16 weight's spacing (docs/precision.md),
# computed by sdpo_interactions.precision_plan from the flags after -- over the recipe, as the run reads them.
sdpo_precision() {
  local args=(--world_size "$WORLD_SIZE" --config "$RECIPE")
  if [[ -f "${ACCELERATE_CONFIG:-}" ]]; then args+=(--accelerate_config "$ACCELERATE_CONFIG"); fi
  "${PYTHON:-python}" -m sdpo_interactions.precision_plan "${args[@]}" "${PASSTHROUGH[@]}" ||
    echo "precision: n/a ($(sdpo_quote "${PYTHON:-python}") -m sdpo_interactions.precision_plan failed: see above)"
}

# The whole training launch, shared by the online scripts (train_online_sdpo_tldr.sh, train_online_sdpo.sh) and
# train_offline_sdpo.sh. The caller sets the experiment's defaults, RUNS_SUBDIR (folder under $SCRATCH),
# PREPARE_SCRIPT (makes the JSONL files), RECIPE, ENTRY (train.py or train_offline.py), SHOWN_MODE_VARS (its own
# variables, printed) and MODE_ARGS (its own flags), then calls this.
sdpo_train() {
  if ((${NUM_MACHINES:-1} > 1)) && [[ -z "${RUN_ID:-}" && -z "${OUTPUT_DIR:-}" ]]; then
    sdpo_usage_error "NUM_MACHINES=$NUM_MACHINES: set RUN_ID (or OUTPUT_DIR) to the same value on every machine," \
      "so that all of them write one run (the default RUN_ID holds each machine's own start time)"
  fi
  : "${RUN_ID:=${EXPERIMENT}-${RUN_TAG}-$(date +%Y%m%d-%H%M%S)}"
  : "${WANDB_NAME:=$RUN_ID}"
  if [[ -z "${OUTPUT_DIR:-}" ]]; then
    if [[ -n "${SCRATCH:-}" ]]; then
      OUTPUT_DIR="$SCRATCH/$RUNS_SUBDIR/$RUN_ID"
    else
      OUTPUT_DIR="$SDPO_ROOT/runs/$RUNS_SUBDIR/$RUN_ID"
      echo "SCRATCH is not set: OUTPUT_DIR defaults to runs/$RUNS_SUBDIR/<run-id> inside the repository"
    fi
  fi

  echo "settings:"
  sdpo_launcher
  sdpo_show MODEL_NAME_OR_PATH "${SHOWN_MODE_VARS[@]}" LR BS GA WORLD_SIZE ACCELERATE_CONFIG NUM_MACHINES \
    MACHINE_RANK MAIN_PROCESS_IP MAIN_PROCESS_PORT TRAIN_JSONL VAL_JSONL TRAIN_N EVAL_N SEED MAX_PROMPT_TOKENS RECIPE \
    SAVE_STEPS RUN_ID OUTPUT_DIR RESUME_FROM_CHECKPOINT WANDB_PROJECT WANDB_NAME
  sdpo_precision
  sdpo_schedule
  echo "credentials:"
  sdpo_show_secrets ANTHROPIC_API_KEY USER_API_KEY WANDB_API_KEY HF_TOKEN

  local hint="make it with $PREPARE_SCRIPT" name
  sdpo_require_file TRAIN_JSONL "$hint"
  if [[ -n "${VAL_JSONL:-}" ]]; then sdpo_require_file VAL_JSONL "$hint"; fi
  sdpo_require_file RECIPE "a YAML file of GRPOConfig fields, see recipes/"
  if [[ -n "${PERSONA_FILE:-}" ]]; then sdpo_require_file PERSONA_FILE "a YAML or JSON file of style -> persona"; fi
  sdpo_wandb

  local cmd=("${LAUNCHER[@]}" "$SDPO_ROOT/$ENTRY" --config "$RECIPE" --train_jsonl "$TRAIN_JSONL")
  for name in VAL_JSONL TRAIN_N EVAL_N; do
    if [[ -n "${!name:-}" ]]; then cmd+=("--${name,,}" "${!name}"); fi
  done
  cmd+=(--seed "$SEED" --max_prompt_tokens "$MAX_PROMPT_TOKENS" --model_name_or_path "$MODEL_NAME_OR_PATH"
    "${MODE_ARGS[@]}" --learning_rate "$LR" --per_device_train_batch_size "$BS" --gradient_accumulation_steps "$GA"
    --output_dir "$OUTPUT_DIR" --report_to wandb --run_name "$WANDB_NAME")
  if [[ -n "${SAVE_STEPS:-}" ]]; then cmd+=(--save_steps "$SAVE_STEPS"); fi
  if [[ -n "${RESUME_FROM_CHECKPOINT:-}" ]]; then cmd+=(--resume_from_checkpoint "$RESUME_FROM_CHECKPOINT"); fi
  cmd+=("${PASSTHROUGH[@]}")
  sdpo_print_and_run "${cmd[@]}"
}

# With USER_API_BASE set, one shared OpenAI-compatible server (scripts/serve_user_simulator.sh) plays the user
# instead of what the experiment would otherwise run (a user model on every rank, or Claude). Returns 1 without it.
sdpo_api_user() {
  if [[ -z "${USER_API_BASE:-}" ]]; then return 1; fi
  : "${USER_API_MODEL:=${USER_MODEL_NAME_OR_PATH:-}}"
  if [[ -z "$USER_API_MODEL" ]]; then
    sdpo_usage_error "USER_API_BASE is set but USER_API_MODEL is not: set it to the model name the server serves"
  fi
  SHOWN_SIMULATOR_VARS=(USER_API_BASE USER_API_MODEL)
  SIMULATOR_ARGS=(--user_api_base "$USER_API_BASE" --user_api_model "$USER_API_MODEL")
}

# The end of every online script, after its defaults: its arguments, its simulated user, then the launch. The user
# is USER_API_BASE's server when that is set, else the experiment's own: `local` (USER_MODEL_NAME_OR_PATH on every
# rank) or `claude` (CLAUDE_MODEL, which needs ANTHROPIC_API_KEY). Call as: sdpo_online_train local|claude "$@"
sdpo_online_train() {
  local own_user=$1
  shift
  sdpo_parse_args "$@"
  if ! sdpo_api_user; then
    if [[ "$own_user" == local ]]; then
      SHOWN_SIMULATOR_VARS=(USER_MODEL_NAME_OR_PATH)
      SIMULATOR_ARGS=(--user_model_name_or_path "$USER_MODEL_NAME_OR_PATH")
    else
      SHOWN_SIMULATOR_VARS=(CLAUDE_MODEL)
      SIMULATOR_ARGS=()
      if [[ -n "${CLAUDE_MODEL:-}" ]]; then SIMULATOR_ARGS=(--claude_model "$CLAUDE_MODEL"); fi
      sdpo_require_anthropic_key "This experiment's simulated user is Claude" \
        "USER_API_BASE, a user model on your own server"
    fi
  fi
  sdpo_online_mode
  sdpo_train
}

# The online experiments' own flags and variables: the policy's system prompt and the simulated user.
sdpo_online_mode() {
  ENTRY=train.py
  # STYLE_SCHEDULE (personas in turn, users/style_schedule.py) replaces STYLE when it is set.
  local persona=STYLE persona_args=(--style "${STYLE:-}")
  RUN_TAG=${STYLE:-}
  if [[ -n "${STYLE_SCHEDULE:-}" ]]; then
    persona=STYLE_SCHEDULE persona_args=(--style_schedule "$STYLE_SCHEDULE") RUN_TAG=schedule
  fi
  sdpo_vllm
  SHOWN_MODE_VARS=("${SHOWN_SIMULATOR_VARS[@]}" "$persona" PERSONA_FILE SYSTEM_PROMPT USE_VLLM)
  if [[ -n "${USE_VLLM:-}" ]]; then SHOWN_MODE_VARS+=(VLLM_GPU_MEMORY_UTILIZATION VLLM_TP VLLM_SERVER_URL); fi
  MODE_ARGS=(--system_prompt "$SYSTEM_PROMPT" "${SIMULATOR_ARGS[@]}" "${persona_args[@]}" "${VLLM_ARGS[@]}")
  if [[ -n "${PERSONA_FILE:-}" ]]; then MODE_ARGS+=(--persona_file "$PERSONA_FILE"); fi
}

# The data preparation shared by the prepare_data_*.sh scripts. The caller sets TASK (a prepare_data.py task),
# WHAT (one line on what it writes) and DEFAULT_OUT (a folder under data/), then calls this with "$@".
sdpo_prepare_usage() {
  cat <<USAGE
usage: [VAR=value ...] scripts/$SDPO_SCRIPT [--dry-run] [-- extra prepare_data.py arguments]

Writes train.jsonl and validation.jsonl of $WHAT.
Variables (default):
  OUT_DIR      output folder (./$DEFAULT_OUT in the repository)
  DATA_SOURCE  local copy of the dataset to read instead of the Hub: a save_to_disk folder, or a folder of
               parquet/JSON files named by split (unset: download from the Hub)
  PYTHON       python to run prepare_data.py with (python)
Options:
  --dry-run   print the settings and the exact command, run nothing
  -h, --help  this help
USAGE
}

sdpo_prepare() {
  usage() { sdpo_prepare_usage; }
  sdpo_parse_args "$@"
  : "${OUT_DIR:=$SDPO_ROOT/$DEFAULT_OUT}"
  echo "settings:"
  sdpo_show OUT_DIR DATA_SOURCE
  echo "credentials:"
  sdpo_show_secrets HF_TOKEN
  local cmd=("${PYTHON:-python}" "$SDPO_ROOT/prepare_data.py" "$TASK" --output_dir "$OUT_DIR")
  if [[ -n "${DATA_SOURCE:-}" ]]; then
    if [[ ! -f "$DATA_SOURCE" ]]; then
      sdpo_require_dir DATA_SOURCE "a save_to_disk folder, or a folder of parquet/JSON files named by split"
    fi
    cmd+=(--source "$DATA_SOURCE")
  fi
  sdpo_print_and_run "${cmd[@]}" "${PASSTHROUGH[@]}"
}

# The demos: print the commands held in the named arrays (shell-quoted); unless this is a dry run, start afresh in
# OUT_DIR (an earlier run's folder, so no stale checkpoint is mixed in) and run them in order.
sdpo_run_demo() {
  local name
  echo "commands:"
  for name in "$@"; do
    local -n shown=$name
    sdpo_quote_words "${shown[@]}"
  done
  if ((DRY_RUN)); then
    echo "dry run: nothing was executed"
    exit 0
  fi
  if [[ -f "$OUT_DIR/sdpo_run_settings.json" ]]; then rm -rf "$OUT_DIR"; fi
  for name in "$@"; do
    local -n step=$name
    "${step[@]}"
  done
}
