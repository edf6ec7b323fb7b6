#!/usr/bin/env bash
# Write train.jsonl and validation.jsonl of conversations from microsoft/WildFeedback, split by conversation, for offline SDPO, once, before training.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

# The paper's Table 2 trains on this data: compare the counts printed below with its figures.
case " $* " in
  *" -h "* | *" --help "*) ;;
  *) echo "the paper's Table 2: WildFeedback's about 20k conversations, about 14k of them with a follow-up (no_reply" \
    "counts the others), about 50k samples" ;;
esac
TASK=wildfeedback
WHAT='conversations from microsoft/WildFeedback, split by conversation, for offline SDPO'
DEFAULT_OUT=data/wildfeedback_conversations
sdpo_prepare "$@"
