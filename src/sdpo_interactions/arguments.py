"""The command-line arguments both training entry points share, so that the same setting has the same flag name
online (train.py) and offline (train_offline.py). Checked on parsing, before any model loads.

The policy's model flags are TRL's own `ModelConfig` (dtype, attention, LoRA/PEFT, k-bit loading), as in TRL's
scripts, so `--use_peft --lora_r 16 --lora_target_modules q_proj v_proj` means here what it means there."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from trl import ModelConfig, get_kbit_device_map, get_peft_config, get_quantization_config

from sdpo_interactions.run_files import InputError, MissingInputError


@dataclass
class DataArguments:
    """The training data and the policy (training hyper-parameters live in the SDPO config)."""

    # Where to get the data, named in the error for a missing --train_jsonl.
    DATA_HINT: ClassVar[str] = "a JSONL file"

    train_jsonl: Optional[str] = field(
        default=None,
        metadata={"help": 'Training data, JSONL: one {"prompt": "..."} per line online (train.py), one '
                          '{"messages": [...]} conversation per line offline (train_offline.py).'},
    )
    val_jsonl: Optional[str] = field(default=None, metadata={"help": "Validation data, same format (optional)."})
    train_n: Optional[int] = field(default=None, metadata={"help": "Use a seeded random subset of this many samples."})
    eval_n: Optional[int] = field(default=None, metadata={"help": "Use this many validation samples."})
    max_prompt_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "Longest chat-formatted prompt in tokens (default: --max_prompt_length, so that no prompt "
                          "is silently truncated). Online, longer prompts are dropped; offline, they lose their "
                          "earliest exchanges first."},
    )
    def __post_init__(self):
        if self.train_jsonl is None:
            raise InputError(f"--train_jsonl is required ({self.DATA_HINT})")
        for flag in ("train_jsonl", "val_jsonl"):
            path = getattr(self, flag)
            if path is not None and not os.path.isfile(path):
                what = "a folder, not a file" if os.path.isdir(path) else "no such file"
                raise MissingInputError(f"--{flag}: {what}: {path}")
        check_positive(self, "train_n", "eval_n", "max_prompt_tokens")


@dataclass
class PolicyModelConfig(ModelConfig):
    """TRL's ModelConfig with the paper's policy as the default model."""

    model_name_or_path: Optional[str] = field(
        default="Qwen/Qwen3-8B", metadata={"help": "Policy model (hub id or folder)."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_model_path(self.model_name_or_path, "--model_name_or_path")


def check_model_path(value: Optional[str], flag: str) -> None:
    """A model is a folder or a hub id: a value that is neither (a mistyped path, say) fails here, on parsing,
    rather than as a hub validation error once the run has started. A valid hub id is left to the hub."""
    if value is None or os.path.isdir(value):
        return
    if os.path.exists(value):
        raise InputError(f"{flag} {value}: a file, not a model folder")
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise MissingInputError(f"{flag} {value}: no such folder (and not a Hugging Face hub id)") from None


def policy_init(model_args: ModelConfig, training_args) -> Optional[object]:
    """Fold the model flags into `training_args.model_init_kwargs` and return the PEFT config (None without LoRA).

    A flag set on the command line wins over a recipe's `model_init_kwargs` (the recipes load the policy in bf16);
    a flag left unset keeps the recipe's value, so `--use_peft` alone changes nothing else.
    """
    kwargs = dict(training_args.model_init_kwargs or {})
    if model_args.model_revision != "main":
        kwargs["revision"] = model_args.model_revision
    if model_args.trust_remote_code:
        kwargs["trust_remote_code"] = True
    for name in ("attn_implementation", "dtype"):
        if getattr(model_args, name) is not None:
            kwargs[name] = getattr(model_args, name)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map=get_kbit_device_map())
    training_args.model_init_kwargs = kwargs or None
    return get_peft_config(model_args)


def check_positive(args, *flags: str) -> None:
    """Each named flag, when set, must be >= 1."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag} must be >= 1, got {value}")
