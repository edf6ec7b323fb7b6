"""The held-out prompts an evaluation answers, from either data format the project trains on.

A prompts file (one `{"prompt": "..."}` per line, what train.py reads) gives one single-turn prompt per line. A
conversations file (one `{"messages": [...]}` per line, what train_offline.py reads, e.g. the validation.jsonl of
`prepare_data.py conversations`) gives one prompt per user turn: the conversation up to and including that request,
so the policy answers each request with the context it had in the log. Both come out as chat messages in the
run's format, a seeded subset of `n`.
"""

from __future__ import annotations

import json
import random
from typing import Optional

from sdpo_interactions.conversations import fit_prompt, raw_turns, read_conversations
from sdpo_interactions.prompts import load_prompt_dataset
from sdpo_interactions.run_files import InputError, iter_jsonl


def data_format(path: str) -> str:
    """"prompts" or "conversations", from the file's first record."""
    for where, record in iter_jsonl(path):
        if isinstance(record, dict) and "prompt" in record:
            return "prompts"
        if isinstance(record, dict) and raw_turns(record) is not None:
            return "conversations"
        raise InputError(f'{where}: expected {{"prompt": "..."}} (a prompts file) or {{"messages": [...]}} '
                         "(a conversations file)")
    raise InputError(f"{path}: no records")


def conversation_prompts(path: str, system_prompt: str) -> list[list[dict[str, str]]]:
    """Every distinct (conversation up to a user turn) of a conversations file. A conversation's own system turn is
    kept; one without gets `system_prompt` (if any), as a prompt of a prompts file would."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompts, seen = [], set()
    for _, messages in read_conversations(path):
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if messages[0]["role"] != "system":
            messages = system + messages
        for i, message in enumerate(messages):
            key = json.dumps(messages[: i + 1])
            if message["role"] == "user" and key not in seen:
                seen.add(key)
                prompts.append(messages[: i + 1])
    return prompts


def load_held_out(path: str, system_prompt: str, *, tokenizer=None, max_prompt_tokens: Optional[int] = None,
                  n: Optional[int] = None, seed: int = 42, chat_template_kwargs: Optional[dict] = None) -> list:
    """The held-out prompts as chat messages, a seeded subset of `n`.

    Over `max_prompt_tokens` (chat-formatted), a single-turn prompt is dropped, as train.py drops it, and a
    conversation loses its earliest exchanges first, as train_offline.py fits it.
    """
    if data_format(path) == "prompts":
        return list(load_prompt_dataset(path, system_prompt, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens,
                                        n=n, seed=seed, chat_template_kwargs=chat_template_kwargs)["prompt"])
    prompts = conversation_prompts(path, system_prompt)
    if max_prompt_tokens is not None:
        kwargs = chat_template_kwargs or {}

        def count(messages):
            return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs))

        fitted = [fit_prompt(prompt, count, max_prompt_tokens)[0] for prompt in prompts]
        prompts = list({json.dumps(p): p for p in fitted if p is not None}.values())
    if not prompts:
        raise InputError(f"{path}: no prompts left after filtering (max_prompt_tokens={max_prompt_tokens})")
    random.Random(seed).shuffle(prompts)
    return prompts[:n] if n is not None else prompts
