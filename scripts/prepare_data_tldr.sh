#!/usr/bin/env bash
# Write train.jsonl and validation.jsonl of TL;DR prompts from openai/summarize_from_feedback (config comparisons), once, before training.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

TASK=tldr
WHAT='TL;DR prompts from openai/summarize_from_feedback (config comparisons)'
DEFAULT_OUT=data/tldr_prompts_unique
sdpo_prepare "$@"
