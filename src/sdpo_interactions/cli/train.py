"""Train a policy with online SDPO from a simulated user's replies.

    python train.py --train_jsonl data/sample/train.jsonl --model_name_or_path Qwen/Qwen3-8B \
        --user_model_name_or_path Qwen/Qwen3-8B --style concise_casual_beginner --output_dir runs/x

Every GRPOConfig/TrainingArguments flag works too, and `--config recipe.yaml` reads them from a file. The user is
a local model on every rank (`--user_model_name_or_path`), one shared OpenAI-compatible server such as vLLM
(`--user_api_base URL --user_api_model NAME`, scripts/serve_user_simulator.sh starts one), or else Claude (needs
ANTHROPIC_API_KEY). All input is checked before any
model is loaded, so a typo costs seconds, not the minutes an 8B model takes to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from transformers import AutoTokenizer

from sdpo_interactions.personas import resolve_persona
from sdpo_interactions.prompts import SYSTEM_PROMPTS, load_prompt_dataset, prompt_token_limit
from sdpo_interactions.run_files import resolve_checkpoint
from sdpo_interactions.sampling import Sampling
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.users.api import ClaudeStyleUserSimulator, OpenAIStyleUserSimulator
from sdpo_interactions.chat_clients import DEFAULT_CLAUDE_MODEL, check_api_base
from sdpo_interactions.arguments import DataArguments, PolicyModelConfig, check_positive, policy_init
from sdpo_interactions.cli.common import run_cli, train_and_save
from sdpo_interactions.users.base import StyleUserSimulator, UserSimulator

logger = logging.getLogger(__name__)

# The authors' simulated users: a local model replies in up to 128 tokens at temperature 0.7 (with Qwen3's top_p
# 0.95 and top_k 20, which transformers filled in), Claude in up to 256 tokens at temperature 0. A served user
# model ("api") is the local one moved to a server, so it keeps the local defaults.
USER_DEFAULTS = {
    "local": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.95, "top_k": 20},
    "api": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.95, "top_k": 20},
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
        metadata={"help": "Local user-simulator model, loaded on every rank. When neither it nor --user_api_base is "
                          "set, Claude plays the user (needs ANTHROPIC_API_KEY)."},
    )
    user_api_base: Optional[str] = field(
        default=None,
        metadata={"help": "URL of an OpenAI-compatible server playing the user, shared by all ranks, e.g. "
                          "http://simhost:8000/v1 (vLLM, SGLang, llama.cpp, TGI). Its key, if any, is read from "
                          "USER_API_KEY (else OPENAI_API_KEY) and never logged or saved."},
    )
    user_api_model: Optional[str] = field(
        default=None,
        metadata={"help": "Model name the --user_api_base server serves (its /v1/models lists it)."},
    )
    user_max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": "Longest simulated-user reply, in tokens (default: 128 local, 256 Claude)."}
    )
    user_temperature: Optional[float] = field(
        default=None,
        metadata={"help": "Sampling temperature of the simulated user (default: 0.7 local, 0 Claude; 0 is greedy)."},
    )
    user_top_p: Optional[float] = field(
        default=None, metadata={"help": "top_p of a local or served user (default 0.95; 1.0 switches it off)."}
    )
    user_top_k: Optional[int] = field(
        default=None,
        metadata={"help": "top_k of a local or served user (default 20; 0 switches it off, and sends no top_k to a "
                          "server)."},
    )
    user_batch_size: int = field(default=8, metadata={"help": "Batch size of the local user simulator."})
    claude_model: str = field(default=DEFAULT_CLAUDE_MODEL, metadata={"help": "Claude model of the user."})
    user_api_max_concurrency: int = field(
        default=16, metadata={"help": "Concurrent requests per process to the user's API (Claude or a server)."}
    )
    user_api_timeout: float = field(default=60.0, metadata={"help": "Seconds before one user request times out."})
    user_api_max_retries: int = field(default=8, metadata={"help": "Retries of the API SDK per user request."})
    user_api_max_failed_frac: float = field(
        default=0.5, metadata={"help": "Stop when more than this share of a step's user requests fails for good."}
    )
    user_api_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "On-disk cache of the API user's replies, so a resumed run does not pay twice."},
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
        self.user_backend = self._pick_user_backend()
        defaults = USER_DEFAULTS[self.user_backend]
        if self.user_backend == "claude" and (self.user_top_p is not None or self.user_top_k is not None):
            raise ValueError("--user_top_p and --user_top_k apply to a local or served user model "
                             "(--user_model_name_or_path or --user_api_base), not to Claude")
        for flag in ("max_new_tokens", "temperature", "top_p", "top_k"):
            if getattr(self, f"user_{flag}") is None and flag in defaults:
                setattr(self, f"user_{flag}", defaults[flag])
        if self.user_backend != "claude":
            Sampling(temperature=self.user_temperature, top_p=self.user_top_p, top_k=self.user_top_k)
        check_positive(self, "user_api_max_concurrency")
        if self.user_api_timeout <= 0:
            raise ValueError(f"--user_api_timeout must be > 0 seconds, got {self.user_api_timeout}")

    def _pick_user_backend(self) -> str:
        """local (a model on every rank), api (one shared OpenAI-compatible server) or claude: a USER_BACKENDS key."""
        if self.user_api_base is None:
            if self.user_api_model is not None:
                raise ValueError("--user_api_model names the model of a --user_api_base server; set --user_api_base")
            return "local" if self.user_model_name_or_path is not None else "claude"
        if self.user_model_name_or_path is not None:
            raise ValueError(
                "Set either --user_model_name_or_path (a user model loaded on every rank) or --user_api_base (one "
                "server all ranks share), not both"
            )
        check_api_base(self.user_api_base, "--user_api_base")
        if not self.user_api_model:
            raise ValueError("--user_api_base needs --user_api_model: the model name the server serves "
                             "(GET <user_api_base>/models lists it)")
        return "api"


# What the command line parses into, in main's order.
ARGUMENTS = (ScriptArguments, OnlineSDPOConfig, PolicyModelConfig)


def _local_user(args: ScriptArguments, chat_template_kwargs: dict) -> UserSimulator:
    return StyleUserSimulator(
        args.user_model_name_or_path,
        args.style,
        persona=args.persona,
        max_new_tokens=args.user_max_new_tokens,
        sampling=Sampling(temperature=args.user_temperature, top_p=args.user_top_p, top_k=args.user_top_k),
        batch_size=args.user_batch_size,
        chat_template_kwargs=chat_template_kwargs,
    )


def _client_settings(args: ScriptArguments) -> dict:
    """What both API users take from the --user_api_* flags."""
    return dict(
        max_concurrency=args.user_api_max_concurrency,
        timeout=args.user_api_timeout,
        max_retries=args.user_api_max_retries,
        max_failed_frac=args.user_api_max_failed_frac,
        cache_dir=args.user_api_cache_dir,
        persona=args.persona,
    )


def _served_user(args: ScriptArguments, chat_template_kwargs: dict) -> UserSimulator:
    return OpenAIStyleUserSimulator(
        args.style,
        base_url=args.user_api_base,
        model=args.user_api_model,
        max_tokens=args.user_max_new_tokens,
        temperature=args.user_temperature,
        top_p=args.user_top_p,
        top_k=args.user_top_k,
        **_client_settings(args),
    )


def _claude_user(args: ScriptArguments, chat_template_kwargs: dict) -> UserSimulator:
    return ClaudeStyleUserSimulator(
        args.style,
        model=args.claude_model,
        max_tokens=args.user_max_new_tokens,
        temperature=args.user_temperature,
        **_client_settings(args),
    )


# ScriptArguments.user_backend (from the flags) -> the builder of that user.
USER_BACKENDS = {"local": _local_user, "api": _served_user, "claude": _claude_user}


def build_user_simulator(args: ScriptArguments, chat_template_kwargs: dict) -> UserSimulator:
    return USER_BACKENDS[args.user_backend](args, chat_template_kwargs)


def main(script_args: ScriptArguments, training_args: OnlineSDPOConfig, model_args: PolicyModelConfig) -> None:
    resume = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    peft_config = policy_init(model_args, training_args)
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
    train_dataset = load_prompt_dataset(script_args.train_jsonl, n=script_args.train_n, **load)
    eval_dataset = (
        load_prompt_dataset(script_args.val_jsonl, n=script_args.eval_n, **load) if script_args.val_jsonl else None
    )
    logger.info("Prompts: %d train, %s validation", len(train_dataset), len(eval_dataset) if eval_dataset else 0)

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
        },
    )
    train_and_save(trainer, resume)


def cli() -> None:
    run_cli(main, *ARGUMENTS)


if __name__ == "__main__":
    cli()
