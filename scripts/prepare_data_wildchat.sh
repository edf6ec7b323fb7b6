#!/usr/bin/env bash
# Write train.jsonl and validation.jsonl of English conversations from allenai/WildChat, split by conversation, for offline SDPO, once, before training.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

TASK=wildchat
WHAT='English conversations from allenai/WildChat, split by conversation, for offline SDPO'
DEFAULT_OUT=data/wildchat_conversations
sdpo_prepare "$@"
