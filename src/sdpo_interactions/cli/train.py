"""Train a policy with online SDPO from a simulated user's replies.

    python train.py --train_jsonl data/sample/train.jsonl --model_name_or_path Qwen/Qwen3-8B \
        --user_model_name_or_path Qwen/Qwen3-8B --style concise_casual_beginner --output_dir runs/x

Every GRPOConfig/TrainingArguments flag works too, and `--config recipe.yaml` reads them from a file. The user
(users/registry.py) is a local model on every rank (`--user_model_name_or_path`), one shared OpenAI-compatible
server such as vLLM (`--user_api_base URL --user_api_model NAME`, scripts/serve_user_simulator.sh starts one), or
else Claude (needs ANTHROPIC_API_KEY). All input is checked before any model is loaded, so a typo costs seconds,
not the minutes an 8B model takes to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from transformers import AutoTokenizer

from sdpo_interactions.arguments import DataArguments, PolicyModelConfig, policy_init
from sdpo_interactions.cli.common import run_cli, train_and_save
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.prompts import SYSTEM_PROMPTS, load_prompt_dataset_with_counts, prompt_token_limit
from sdpo_interactions.run_files import check_output_dir, resolve_checkpoint
from sdpo_interactions.schedule import Schedule, log_schedule
from sdpo_interactions.users.registry import UserArguments, build_user_simulator
from sdpo_interactions.users.style_schedule import BatchArithmetic, StyleSchedule

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments(DataArguments, UserArguments):
    """The run's data, the policy's system prompt and the simulated user (UserArguments: --style, --user_*).

    Training hyper-parameters live in OnlineSDPOConfig, the policy's model flags in PolicyModelConfig.
    """

    DATA_HINT: ClassVar[str] = "make it with scripts/prepare_data_tldr.sh or ..._helpsteer.sh"

    system_prompt: str = field(
        default="tldr",
        metadata={"help": "System prompt of the policy: tldr (summaries) or general (none).",
                  "choices": list(SYSTEM_PROMPTS)},
    )

    def __post_init__(self):
        DataArguments.__post_init__(self)
        if self.system_prompt not in SYSTEM_PROMPTS:
            raise ValueError(f"Unknown --system_prompt {self.system_prompt!r}; choose one of {', '.join(SYSTEM_PROMPTS)}")
        UserArguments.__post_init__(self)


# What the command line parses into, in main's order.
ARGUMENTS = (ScriptArguments, OnlineSDPOConfig, PolicyModelConfig)


def main(script_args: ScriptArguments, training_args: OnlineSDPOConfig, model_args: PolicyModelConfig) -> None:
    check_output_dir(training_args.output_dir)
    resume = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    peft_config = policy_init(model_args, training_args)
    style_schedule = persona_schedule(script_args, training_args)
    max_prompt_tokens = prompt_token_limit(script_args.max_prompt_tokens, training_args.max_prompt_length)
    # An API user is set up first, so a missing key or a bad URL fails within a second; a local user model is
    # loaded only once the data has been checked, since loading it takes minutes.
    local_user = script_args.user_backend == "local"
    user_simulator = None if local_user else build_user_simulator(script_args, training_args.chat_template_kwargs)
    system_prompt = SYSTEM_PROMPTS[script_args.system_prompt]
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    load = dict(
        system_prompt=system_prompt,
        tokenizer=tokenizer,
        max_prompt_tokens=max_prompt_tokens,
        seed=training_args.seed,
        chat_template_kwargs=training_args.chat_template_kwargs,
    )
    train_dataset, counts = load_prompt_dataset_with_counts(script_args.train_jsonl, n=script_args.train_n, **load)
    eval_dataset, eval_counts = (
        load_prompt_dataset_with_counts(script_args.val_jsonl, n=script_args.eval_n, **load)
        if script_args.val_jsonl else (None, None)
    )
    logger.info("Prompts: %d train, %s validation", len(train_dataset), len(eval_dataset) if eval_dataset else 0)
    schedule = log_schedule(training_args, len(train_dataset), "prompts")  # as the launch scripts' dry runs print it
    if style_schedule is not None:
        log_persona_schedule(style_schedule, schedule)

    if local_user:
        user_simulator = build_user_simulator(script_args, training_args.chat_template_kwargs)
    trainer = OnlineSDPOTrainer(
        model=model_args.model_name_or_path,
        user_simulator=user_simulator,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        run_settings={
            "persona_file": script_args.persona_file,
            "system_prompt_name": script_args.system_prompt,
            "system_prompt": system_prompt,
            "max_prompt_tokens": max_prompt_tokens,
            "train_jsonl": script_args.train_jsonl,
            "val_jsonl": script_args.val_jsonl,
            "data_counts": counts,
            "val_data_counts": eval_counts,
        },
        style_schedule=style_schedule,
    )
    train_and_save(trainer, resume)


def persona_schedule(script_args: ScriptArguments, training_args: OnlineSDPOConfig) -> Optional[StyleSchedule]:
    """--style_schedule on this run's batch arithmetic: a switch that is not on a step boundary stops here, before
    any model loads."""
    if script_args.style_schedule is None:
        return None
    return StyleSchedule.build(script_args.style_schedule, BatchArithmetic.of(training_args), script_args.persona_file)


def log_persona_schedule(style_schedule: StyleSchedule, schedule: Optional[Schedule]) -> None:
    """The phases and switch points (what the launch scripts print), and a persona the run never reaches."""
    for line in style_schedule.describe(None if schedule is None else schedule.steps):
        logger.info("%s", line)
    for warning in style_schedule.warnings(schedule.steps, schedule.checkpoints) if schedule is not None else ():
        logger.warning("%s", warning)


def cli() -> None:
    run_cli(main, *ARGUMENTS)


if __name__ == "__main__":
    cli()
