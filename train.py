"""Train a policy with online SDPO from a simulated user's replies.

    python train.py --train_jsonl data/sample/train.jsonl --model_name_or_path Qwen/Qwen3-8B \
        --user_model_name_or_path Qwen/Qwen3-8B --style concise_casual_beginner --output_dir runs/x

Every GRPOConfig/TrainingArguments flag works too, and `--config recipe.yaml` reads them from a file. Without
`--user_model_name_or_path` the user is Claude (needs ANTHROPIC_API_KEY). All input is checked before any
model is loaded, so a typo costs seconds, not the minutes an 8B model takes to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from transformers import AutoTokenizer

from personas import resolve_persona
from prompts import SYSTEM_PROMPTS, load_prompt_dataset, prompt_token_limit
from run_files import resolve_checkpoint
from sampling import Sampling
from sdpo_trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from chat_clients import DEFAULT_CLAUDE_MODEL
from claude_user import ClaudeStyleUserSimulator
from cli_args import DataArguments, check_positive, run_cli, train_and_save
from user_simulator import StyleUserSimulator, UserSimulator

logger = logging.getLogger(__name__)

# The authors' simulated users: a local model replies in up to 128 tokens at temperature 0.7 (with Qwen3's top_p
# 0.95 and top_k 20, which transformers filled in), Claude in up to 256 tokens at temperature 0.
USER_DEFAULTS = {
    "local": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.95, "top_k": 20},
    "claude": {"max_new_tokens": 256, "temperature": 0.0},
}


@dataclass
class ScriptArguments(DataArguments):
    """The run's data, models and simulated user (training hyper-parameters live in OnlineSDPOConfig)."""

    DATA_HINT: ClassVar[str] = "make it with scripts/prepare_data_tldr.sh or ..._helpsteer.sh"

    system_prompt: str = field(
        default="tldr",
        metadata={"help": "System prompt of the policy: tldr (summaries) or general (none).",
                  "choices": list(SYSTEM_PROMPTS)},
    )
    style: str = field(default="concise_casual_beginner", metadata={"help": "Persona of the simulated user."})
    persona_file: Optional[str] = field(
        default=None,
        metadata={"help": "YAML or JSON file of style name -> persona description, adding to or overriding the "
                          "built-in personas (personas.yaml). The text trained with is stored in the run settings."},
    )
    user_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Local user-simulator model. When unset, Claude plays the user (needs ANTHROPIC_API_KEY)."},
    )
    user_max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": "Longest simulated-user reply, in tokens (default: 128 local, 256 Claude)."}
    )
    user_temperature: Optional[float] = field(
        default=None,
        metadata={"help": "Sampling temperature of the simulated user (default: 0.7 local, 0 Claude; 0 is greedy)."},
    )
    user_top_p: Optional[float] = field(
        default=None, metadata={"help": "top_p of a local simulated user (default 0.95; 1.0 switches it off)."}
    )
    user_top_k: Optional[int] = field(
        default=None, metadata={"help": "top_k of a local simulated user (default 20; 0 switches it off)."}
    )
    user_batch_size: int = field(default=8, metadata={"help": "Batch size of the local user simulator."})
    claude_model: str = field(default=DEFAULT_CLAUDE_MODEL, metadata={"help": "Claude model of the user."})
    claude_max_concurrency: int = field(default=16, metadata={"help": "Concurrent Claude requests per process."})
    claude_timeout: float = field(default=60.0, metadata={"help": "Seconds before one Claude request times out."})
    claude_max_retries: int = field(default=8, metadata={"help": "Retries of the anthropic SDK per request."})
    claude_max_failed_frac: float = field(
        default=0.5, metadata={"help": "Stop when more than this share of a step's Claude requests fails for good."}
    )
    claude_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "On-disk cache of Claude replies, so a resumed run does not pay twice."}
    )
    # Resolved in __post_init__, not flags: the persona text of `style`, and which user plays it.
    persona: str = field(default="", init=False)
    user_backend: str = field(default="", init=False)

    def __post_init__(self):
        super().__post_init__()
        if self.system_prompt not in SYSTEM_PROMPTS:
            raise ValueError(f"Unknown --system_prompt {self.system_prompt!r}; choose one of {', '.join(SYSTEM_PROMPTS)}")
        # The persona file is read and checked here, before any model loads; the text is kept for the run.
        self.style, self.persona = resolve_persona(self.style, self.persona_file)
        check_positive(self, "user_max_new_tokens")
        self.user_backend = "local" if self.user_model_name_or_path is not None else "claude"
        defaults = USER_DEFAULTS[self.user_backend]
        if self.user_backend == "claude" and (self.user_top_p is not None or self.user_top_k is not None):
            raise ValueError("--user_top_p and --user_top_k apply to a local user model (--user_model_name_or_path)")
        for flag in ("max_new_tokens", "temperature", "top_p", "top_k"):
            if getattr(self, f"user_{flag}") is None and flag in defaults:
                setattr(self, f"user_{flag}", defaults[flag])
        if self.user_backend == "local":
            Sampling(temperature=self.user_temperature, top_p=self.user_top_p, top_k=self.user_top_k)


def build_user_simulator(args: ScriptArguments, chat_template_kwargs: dict) -> UserSimulator:
    if args.user_backend == "local":
        return StyleUserSimulator(
            args.user_model_name_or_path,
            args.style,
            persona=args.persona,
            max_new_tokens=args.user_max_new_tokens,
            sampling=Sampling(temperature=args.user_temperature, top_p=args.user_top_p, top_k=args.user_top_k),
            batch_size=args.user_batch_size,
            chat_template_kwargs=chat_template_kwargs,
        )
    return ClaudeStyleUserSimulator(
        args.style,
        persona=args.persona,
        model=args.claude_model,
        max_tokens=args.user_max_new_tokens,
        temperature=args.user_temperature,
        max_concurrency=args.claude_max_concurrency,
        timeout=args.claude_timeout,
        max_retries=args.claude_max_retries,
        max_failed_frac=args.claude_max_failed_frac,
        cache_dir=args.claude_cache_dir,
    )


def main(script_args: ScriptArguments, training_args: OnlineSDPOConfig) -> None:
    resume = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    max_prompt_tokens = prompt_token_limit(script_args.max_prompt_tokens, training_args.max_prompt_length)
    # Claude is set up first, so a missing API key fails within a second; a local user model is loaded only once
    # the data has been checked, since loading it takes minutes.
    local_user = script_args.user_backend == "local"
    user_simulator = None if local_user else build_user_simulator(script_args, training_args.chat_template_kwargs)
    system_prompt = SYSTEM_PROMPTS[script_args.system_prompt]
    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    load = dict(
        system_prompt=system_prompt,
        tokenizer=tokenizer,
        max_prompt_tokens=max_prompt_tokens,
        seed=training_args.seed,
        chat_template_kwargs=training_args.chat_template_kwargs,
    )
    train_dataset = load_prompt_dataset(script_args.train_jsonl, n=script_args.train_n, **load)
    eval_dataset = (
        load_prompt_dataset(script_args.val_jsonl, n=script_args.eval_n, **load) if script_args.val_jsonl else None
    )
    logger.info("Prompts: %d train, %s validation", len(train_dataset), len(eval_dataset) if eval_dataset else 0)

    if local_user:
        user_simulator = build_user_simulator(script_args, training_args.chat_template_kwargs)
    trainer = OnlineSDPOTrainer(
        model=script_args.model_name_or_path,
        user_simulator=user_simulator,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        run_settings={
            "persona_file": script_args.persona_file,
            "system_prompt_name": script_args.system_prompt,
            "system_prompt": system_prompt,
            "max_prompt_tokens": max_prompt_tokens,
            "train_jsonl": script_args.train_jsonl,
            "val_jsonl": script_args.val_jsonl,
        },
    )
    train_and_save(trainer, resume)


if __name__ == "__main__":
    run_cli(main, ScriptArguments, OnlineSDPOConfig)
