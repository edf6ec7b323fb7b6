#!/usr/bin/env bash
# Write train.jsonl and validation.jsonl of conversations from microsoft/WildFeedback, split by conversation, for offline SDPO, once, before training.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

TASK=wildfeedback
WHAT='conversations from microsoft/WildFeedback, split by conversation, for offline SDPO'
DEFAULT_OUT=data/wildfeedback_conversations
sdpo_prepare "$@"
