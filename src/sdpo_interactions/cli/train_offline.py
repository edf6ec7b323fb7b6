"""Train a policy with offline SDPO on logged conversations: the user's real next message is the hindsight o.

    python train_offline.py --train_jsonl data/sample/conversations.jsonl --model_name_or_path Qwen/Qwen3-8B \
        --output_dir runs/offline

The conversations file is JSONL, one `{"messages": [...]}` per line (see conversations.py). Flags shared with
train.py have the same names; every OfflineSDPOConfig (GRPOConfig) flag works too, and `--config` reads a recipe.
All input is checked before any model loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from transformers import AutoTokenizer

from sdpo_interactions.arguments import DataArguments, PolicyModelConfig, check_positive, policy_init
from sdpo_interactions.cli.common import run_cli, train_and_save
from sdpo_interactions.conversations import load_conversation_dataset
from sdpo_interactions.core.offline import OfflineSDPOConfig, OfflineSDPOTrainer
from sdpo_interactions.prompts import prompt_token_limit
from sdpo_interactions.schedule import log_schedule
from sdpo_interactions.run_files import check_output_dir, resolve_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class OfflineScriptArguments(DataArguments):
    """The conversations and the policy (training hyper-parameters live in OfflineSDPOConfig)."""

    DATA_HINT: ClassVar[str] = "a conversations JSONL file; make it with scripts/prepare_data_wildchat.sh or from your logs"

    max_history_messages: Optional[int] = field(
        default=5,
        metadata={"help": "Keep at most this many messages of a sample's prompt, the request included (the authors' "
                          "5: the request and the two exchanges before it); older ones are dropped."},
    )
    max_samples_per_conversation: Optional[int] = field(
        default=None, metadata={"help": "Keep at most this many (answer, reply) samples of one conversation."}
    )
    min_request_tokens: Optional[int] = field(
        default=None, metadata={"help": "Drop samples whose request (the user turn y answers) is shorter."}
    )
    min_completion_tokens: Optional[int] = field(
        default=None, metadata={"help": "Drop samples whose logged answer y is shorter (its longest is "
                                        "max_completion_length)."}
    )
    min_feedback_tokens: Optional[int] = field(
        default=None, metadata={"help": "Drop samples whose user reply o is shorter."}
    )
    max_feedback_tokens: Optional[int] = field(
        default=None, metadata={"help": "Drop samples whose user reply o is longer (o is never cut)."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "max_history_messages", "max_samples_per_conversation", "min_request_tokens",
                       "min_completion_tokens", "min_feedback_tokens", "max_feedback_tokens")


# The flags that choose which logged samples train, recorded in the run settings with the counts they gave.
DATA_FILTERS = ("max_prompt_tokens", "max_history_messages", "max_samples_per_conversation", "min_request_tokens",
                "min_completion_tokens", "min_feedback_tokens", "max_feedback_tokens")

# What the command line parses into, in main's order.
ARGUMENTS = (OfflineScriptArguments, OfflineSDPOConfig, PolicyModelConfig)


def main(script_args: OfflineScriptArguments, training_args: OfflineSDPOConfig, model_args: PolicyModelConfig) -> None:
    check_output_dir(training_args.output_dir)
    resume = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    peft_config = policy_init(model_args, training_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    load = dict(
        tokenizer=tokenizer,
        max_prompt_tokens=prompt_token_limit(script_args.max_prompt_tokens, training_args.max_prompt_length),
        token_limits={
            "request": (script_args.min_request_tokens, None),
            "completion": (script_args.min_completion_tokens, training_args.max_completion_length),
            "feedback": (script_args.min_feedback_tokens, script_args.max_feedback_tokens),
        },
        max_samples_per_conversation=script_args.max_samples_per_conversation,
        max_history_messages=script_args.max_history_messages,
        seed=training_args.seed,
        chat_template_kwargs=training_args.chat_template_kwargs,
    )
    train_dataset, counts = load_conversation_dataset(script_args.train_jsonl, n=script_args.train_n, **load)
    logger.info("Training samples: %d of %s", len(train_dataset), counts)
    log_schedule(training_args, len(train_dataset), "samples")  # as the launch scripts' dry runs print it
    eval_dataset, eval_counts = None, None
    if script_args.val_jsonl:
        eval_dataset, eval_counts = load_conversation_dataset(script_args.val_jsonl, n=script_args.eval_n, **load)
        logger.info("Held-out samples: %d of %s", len(eval_dataset), eval_counts)

    trainer = OfflineSDPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        run_settings={"mode": "offline", "train_jsonl": script_args.train_jsonl, "val_jsonl": script_args.val_jsonl,
                      "data_counts": counts, "val_data_counts": eval_counts,
                      "data_filters": {name: getattr(script_args, name) for name in DATA_FILTERS},
                      "ignore_first_tokens": training_args.ignore_first_tokens},
    )
    train_and_save(trainer, resume)


def cli() -> None:
    run_cli(main, *ARGUMENTS)


if __name__ == "__main__":
    cli()
