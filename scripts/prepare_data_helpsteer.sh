#!/usr/bin/env bash
# Write train.jsonl and validation.jsonl of single-turn prompts from nvidia/HelpSteer2, once, before training.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

TASK=helpsteer
WHAT='single-turn prompts from nvidia/HelpSteer2'
DEFAULT_OUT=data/helpsteer2_prompts
sdpo_prepare "$@"
