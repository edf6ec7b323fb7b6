"""The conversation format every part of the project shares: system prompts, prompt messages, prompt files.

Training, evaluation and signal analysis must render a prompt the same way, or an evaluation would measure a
format the policy never trained on; so the format lives here, in the library, and the entry scripts import it.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

import datasets

from sdpo_interactions.run_files import InputError, read_checked_jsonl

logger = logging.getLogger(__name__)

SYSTEM_PROMPTS = {
    # The authors' TL;DR prompt asks for 1-2 sentences, a "TL;DR:" opening and the summary only.
    "tldr": 'Summarize the text in one or two sentences. Begin with "TL;DR:" and write only the summary.',
    "general": "",
}
TLDR_SUFFIX = re.compile(r"\s*TL;DR:\s*\Z")


def prompt_messages(text: str, system_prompt: str) -> list[dict[str, str]]:
    """One chat prompt from a raw JSONL prompt; the `TL;DR:` cue is dropped since the system prompt asks for it."""
    user = TLDR_SUFFIX.sub("", text).strip()
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": user}]


def _last_user_index(messages: list[dict[str, str]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            return i
    raise ValueError(f"prompt has no user message: {messages!r}")


def last_user_text(messages: list[dict[str, str]]) -> str:
    """The raw request the simulated user made: the content of the last user turn."""
    return messages[_last_user_index(messages)]["content"]


def with_last_user_text(messages: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    """A copy of the conversation whose last user turn reads `text`."""
    out = [dict(m) for m in messages]
    out[_last_user_index(messages)]["content"] = text
    return out


def prompt_problem(record) -> Optional[str]:
    """What is wrong with one line of a prompts file, or None."""
    if not isinstance(record, dict) or "prompt" not in record:
        return 'missing "prompt" field'
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        return '"prompt" must be a non-empty string'
    return None


def check_jsonl(path: str) -> list[str]:
    """The prompts of a file; every bad line is reported at once with its file and line (datasets' own JSON
    errors name neither), and an empty file is an error."""
    return [record["prompt"] for _, record in read_checked_jsonl(path, prompt_problem)]


def load_prompt_dataset_with_counts(
    path: str,
    system_prompt: str,
    tokenizer=None,
    max_prompt_tokens: Optional[int] = None,
    n: Optional[int] = None,
    seed: int = 42,
    chat_template_kwargs: Optional[dict] = None,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Load JSONL prompts into TRL's conversational format (a `prompt` column of [system?, user] messages), with
    the count of every prompt read, dropped and kept, which is logged too.

    Prompts longer than `max_prompt_tokens` (chat-formatted) are dropped, then a seeded shuffle takes `n`.
    """
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer")
    prompts = [prompt_messages(text, system_prompt) for text in check_jsonl(path)]
    kwargs = chat_template_kwargs or {}
    kept = [p for p in prompts if max_prompt_tokens is None
            or len(tokenizer.apply_chat_template(p, add_generation_prompt=True, **kwargs)) <= max_prompt_tokens]
    counts = {"prompts": len(prompts), "too_long": len(prompts) - len(kept), "kept": len(kept)}
    logger.info("%s: %s", path, ", ".join(f"{name}={count}" for name, count in counts.items()))
    if not kept:
        raise InputError(f"{path}: no prompts left after filtering: all {len(prompts)} are longer than "
                         f"max_prompt_tokens={max_prompt_tokens}")
    data = datasets.Dataset.from_dict({"prompt": kept}).shuffle(seed=seed)
    return (data.select(range(min(n, len(data)))) if n is not None else data), counts


def load_prompt_dataset(path: str, system_prompt: str, **options) -> datasets.Dataset:
    """The prompts of `load_prompt_dataset_with_counts` alone (its counts are logged)."""
    return load_prompt_dataset_with_counts(path, system_prompt, **options)[0]


def prompt_token_limit(max_prompt_tokens: Optional[int], max_prompt_length: Optional[int]) -> Optional[int]:
    """TRL cuts prompts longer than max_prompt_length (its generation prompt included), so drop them instead."""
    if max_prompt_tokens is None:
        return max_prompt_length
    if max_prompt_length is not None and max_prompt_tokens > max_prompt_length:
        raise InputError(
            f"--max_prompt_tokens {max_prompt_tokens} exceeds --max_prompt_length {max_prompt_length}: longer "
            "prompts would be truncated at generation; raise --max_prompt_length or lower --max_prompt_tokens"
        )
    return max_prompt_tokens
