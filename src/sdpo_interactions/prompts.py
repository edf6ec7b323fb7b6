"""The conversation format every part of the project shares: system prompts, prompt messages, prompt files.

Training, evaluation and signal analysis must render a prompt the same way, or an evaluation would measure a
format the policy never trained on; so the format lives here, in the library, and the entry scripts import it.
"""

from __future__ import annotations

import re
from typing import Optional

import datasets

from sdpo_interactions.run_files import iter_jsonl

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


def check_jsonl(path: str) -> None:
    """Fail with the file and line of the first bad record: datasets' own JSON errors name neither."""
    for where, record in iter_jsonl(path):
        if not isinstance(record, dict) or "prompt" not in record:
            raise ValueError(f'{where}: missing "prompt" field')
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise ValueError(f'{where}: "prompt" must be a non-empty string')


def load_prompt_dataset(
    path: str,
    system_prompt: str,
    tokenizer=None,
    max_prompt_tokens: Optional[int] = None,
    n: Optional[int] = None,
    seed: int = 42,
    chat_template_kwargs: Optional[dict] = None,
) -> datasets.Dataset:
    """Load JSONL prompts into TRL's conversational format: a `prompt` column of [system?, user] messages.

    Prompts longer than `max_prompt_tokens` (chat-formatted) are dropped, then a seeded shuffle takes `n`.
    """
    check_jsonl(path)
    data = datasets.load_dataset("json", data_files=path, split="train")
    data = data.map(
        lambda row: {"prompt": prompt_messages(row["prompt"], system_prompt)},
        remove_columns=data.column_names,
    )
    if max_prompt_tokens is not None:
        if tokenizer is None:
            raise ValueError("max_prompt_tokens needs a tokenizer")
        kwargs = chat_template_kwargs or {}
        data = data.filter(
            lambda row: len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, **kwargs))
            <= max_prompt_tokens
        )
    if len(data) == 0:
        raise ValueError(f"{path}: no prompts left after filtering (max_prompt_tokens={max_prompt_tokens})")
    data = data.shuffle(seed=seed)
    return data.select(range(min(n, len(data)))) if n is not None else data


def prompt_token_limit(max_prompt_tokens: Optional[int], max_prompt_length: Optional[int]) -> Optional[int]:
    """TRL cuts prompts longer than max_prompt_length (its generation prompt included), so drop them instead."""
    if max_prompt_tokens is None:
        return max_prompt_length
    if max_prompt_length is not None and max_prompt_tokens > max_prompt_length:
        raise ValueError(
            f"--max_prompt_tokens {max_prompt_tokens} exceeds --max_prompt_length {max_prompt_length}: longer "
            "prompts would be truncated at generation; raise --max_prompt_length or lower --max_prompt_tokens"
        )
    return max_prompt_tokens
