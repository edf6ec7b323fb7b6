"""Logged conversations as offline SDPO samples: every assistant turn y with the user turn o that follows it.

The format is the one a team's chat logs already have: JSONL, one conversation per line, as an OpenAI-style
`{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`. An optional system turn comes first,
then user and assistant turns alternate, starting with a user turn. In a conversation x1 y1 o1=x2 y2 o2 ... each
(y_k, the next user turn) pair is one sample whose prompt x is everything before y_k, so later turns give multi-turn
samples with the hindsight placed, as online, after the user turn that precedes y. The shapes of the public logs
read the same: WildChat's `conversation` and ShareGPT's `conversations` of `{"from": "human"|"gpt", "value": ...}`.
A file is checked whole: every bad line is reported with its `file:line` and what is wrong, messages counted from 1.

Two optional per-message marks carry what a log may know: `"truncated": true` on an assistant turn cut off by a
length limit (an OpenAI-style `"finish_reason": "length"` means the same), and `"reaction": false` on a user turn
that is a new request rather than a reaction to the answer before it. Samples with either are left out, and counted.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

from sdpo_interactions.run_files import InputError, read_checked_jsonl

ROLES = ("system", "user", "assistant")
MARKS = ("truncated", "reaction")
# The role names of the sources: OpenAI-style (role/content) and ShareGPT-style (from/value, as in WildFeedback).
ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
# Where to turn a file with bad lines into a clean one; named in the error that lists them.
SKIP_HINT = "prepare_data.py conversations --source FILE --skip_bad_lines writes a copy without bad lines"


def raw_turns(row: dict):
    """A source record's turns, under the name its dataset uses: WildChat's `conversation`, WildFeedback's
    `conversations`, or `messages` (OpenAI-style logs)."""
    return next((row[key] for key in ("conversation", "conversations", "messages") if row.get(key) is not None), None)


def _role(turn) -> Optional[str]:
    return ROLE_NAMES.get(turn.get("role", turn.get("from"))) if isinstance(turn, dict) else None


def _content(turn: dict):
    return turn.get("content", turn.get("value"))


def _message_problem(turn) -> Optional[str]:
    role = _role(turn)
    if role is None:
        return f"needs a role, one of {', '.join(ROLES)}"
    if not isinstance(_content(turn), str):
        return f"({role}) needs a string content"
    for mark in MARKS:
        if turn.get(mark) is not None and not isinstance(turn[mark], bool):
            return f"({role}): {mark!r} must be true or false"
    return None


def order_problem(roles: list[str]) -> Optional[str]:
    """What is wrong with the order of a conversation's roles, or None. Messages are named by position from 1."""
    turns = roles[1:] if roles and roles[0] == "system" else roles
    offset = len(roles) - len(turns)
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            return (f"message {i + offset + 1} of {len(roles)} is {role!r} where {expected!r} was due: after an "
                    "optional system turn, user and assistant turns alternate, starting with the user")
    if "assistant" not in turns:
        return "no assistant turn, so nothing to learn from"
    return None


def record_problem(record) -> Optional[str]:
    """What makes a record unusable as a conversation, or None: the one rule for a user's own file, in
    train_offline.py and prepare_data.py alike. Messages are named by their position, counted from 1."""
    raw = raw_turns(record) if isinstance(record, dict) else None
    if not isinstance(raw, list):
        return 'expected an object with a "messages" list'
    for i, turn in enumerate(raw, start=1):
        problem = _message_problem(turn)
        if problem is not None:
            return f"message {i} of {len(raw)} {problem}"
    return order_problem([_role(turn) for turn in raw])


def check_conversation(record, where: str) -> list[dict[str, str]]:
    """The record's messages, or an `InputError` naming `where` (file:line) and what is wrong."""
    problem = record_problem(record)
    if problem is not None:
        raise InputError(f"{where}: {problem}")
    return normalize_turns(raw_turns(record))


def keep_marks(source: dict, message: dict) -> dict:
    """`message` with the marks `source` sets (see the module docstring), `finish_reason: length` read as truncated."""
    if source.get("finish_reason") == "length":
        message["truncated"] = True
    for mark in MARKS:
        if isinstance(source.get(mark), bool):
            message[mark] = source[mark]
    return message


def read_conversations(path: str) -> list[tuple[str, list[dict[str, str]]]]:
    """(`file:line`, messages) for each conversation; a `BadLinesError` lists every bad line with its file and line."""
    return [(where, normalize_turns(raw_turns(record)))
            for where, record in read_checked_jsonl(path, record_problem, SKIP_HINT)]


def interaction_samples(messages: list[dict[str, str]]) -> list[dict]:
    """One sample per assistant turn that a user turn follows: the prompt before it, y, and o.

    The last assistant turn of a conversation has no reply and gives no sample.
    """
    samples = []
    for i in range(len(messages) - 1):
        if messages[i]["role"] == "assistant" and messages[i + 1]["role"] == "user":
            samples.append({
                "prompt": [{"role": m["role"], "content": m["content"]} for m in messages[:i]],
                "completion": messages[i]["content"],
                "feedback": messages[i + 1]["content"],
                "truncated": messages[i].get("truncated", False),
                "reaction": messages[i + 1].get("reaction", True),
            })
    return samples


def fit_prompt(
    prompt: list[dict[str, str]], count_tokens: Callable[[list[dict[str, str]]], int], limit: Optional[int],
    max_messages: Optional[int] = None,
) -> tuple[Optional[list[dict[str, str]]], int]:
    """Drop the earliest (user, assistant) exchanges, never the system turn or the last request, until the prompt
    holds at most `max_messages` messages besides the system turn and fits `limit` tokens. Returns the prompt (None
    if even the system turn and the last request do not fit) and how many exchanges were dropped. y and o are never
    cut: they are not part of the prompt.
    """
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    turns = prompt[len(system):]
    dropped = 0
    while max_messages is not None and len(turns) > max(max_messages, 1):
        turns = turns[2:]
        dropped += 1
    while limit is not None and count_tokens(system + turns) > limit:
        if len(turns) <= 1:
            return None, dropped
        turns = turns[2:]
        dropped += 1
    return system + turns, dropped


def token_limit_problem(tokens: dict[str, int], limits: dict[str, tuple[Optional[int], Optional[int]]]) -> Optional[str]:
    """The first `<part>_too_short` / `<part>_too_long` among `tokens` (part -> length) against `limits`
    (part -> (min, max), None for no bound), or None when every part is within its bounds."""
    for part, (low, high) in limits.items():
        if low is not None and tokens[part] < low:
            return f"{part}_too_short"
        if high is not None and tokens[part] > high:
            return f"{part}_too_long"
    return None


class SampleFilter:
    """The sample-level filters of `load_conversation_dataset`, applied conversation by conversation, with counts.

    `token_limits` bounds the tokens of the `request` (the user turn y answers), the `completion` y (its EOS
    included) and the `feedback` o: part -> (min, max), None for no bound. y and o are never cut: a sample outside
    the bounds is dropped. A prompt over `max_prompt_tokens` or `max_history_messages` loses its earliest exchanges.
    """

    def __init__(self, tokenizer, *, max_prompt_tokens=None, token_limits=None, max_samples_per_conversation=None,
                 max_history_messages=None, chat_template_kwargs=None):
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.token_limits = token_limits or {}
        self.cap = max_samples_per_conversation
        self.max_history_messages = max_history_messages
        self.template_kwargs = chat_template_kwargs or {}
        self.seen: set[str] = set()
        self.counts = {"conversations": 0, "samples": 0, "empty_turn": 0, "prompt_too_long": 0, "over_cap": 0,
                       "duplicate": 0, "early_exchanges_dropped": 0}

    def _prompt_tokens(self, messages) -> int:
        return len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, **self.template_kwargs))

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _problem(self, sample, prompt, key, kept) -> Optional[str]:
        if not sample["completion"].strip() or not sample["feedback"].strip():
            return "empty_turn"
        if sample["truncated"]:
            return "truncated_answer"
        if not sample["reaction"]:
            return "not_a_reaction"
        if prompt is None:
            return "prompt_too_long"
        if key in self.seen:
            return "duplicate"
        if self.cap is not None and kept >= self.cap:
            return "over_cap"
        lengths = {"request": self._tokens(sample["prompt"][-1]["content"]),
                   "completion": self._tokens(sample["completion"]) + 1, "feedback": self._tokens(sample["feedback"])}
        return token_limit_problem(lengths, self.token_limits)

    def conversation(self, messages: list[dict[str, str]]) -> list[dict]:
        """The samples of one conversation that pass every filter, each prompt fitted to its budgets."""
        self.counts["conversations"] += 1
        kept = []
        for sample in interaction_samples(messages):
            self.counts["samples"] += 1
            prompt, dropped = fit_prompt(sample["prompt"], self._prompt_tokens, self.max_prompt_tokens,
                                         self.max_history_messages)
            key = repr((prompt, sample["completion"], sample["feedback"]))
            problem = self._problem(sample, prompt, key, len(kept))
            if problem is not None:
                self.counts[problem] = self.counts.get(problem, 0) + 1
                continue
            self.seen.add(key)
            self.counts["early_exchanges_dropped"] += dropped
            kept.append({"prompt": prompt, "completion": sample["completion"], "feedback": sample["feedback"]})
        return kept


def load_conversation_dataset(path: str, tokenizer, *, n: Optional[int] = None, seed: int = 42, **filters):
    """The samples of a conversations file as a shuffled `datasets.Dataset` of prompt / completion / feedback (a
    seeded subset of `n`), and the count each filter removed; `filters` are `SampleFilter`'s settings."""
    import datasets

    sample_filter = SampleFilter(tokenizer, **filters)
    rows = [row for _, messages in read_conversations(path) for row in sample_filter.conversation(messages)]
    if not rows:
        raise InputError(f"{path}: no sample left after filtering ({sample_filter.counts})")
    data = datasets.Dataset.from_list(rows).shuffle(seed=seed)
    if n is not None:
        data = data.select(range(min(n, len(data))))
    return data, sample_filter.counts


# -- Preparing logged datasets (WildChat, WildFeedback, a team's own logs) into this format ---------------------

# The authors' conversation-level limits, in characters.
MAX_TURN_CHARS = 4096
MAX_TOTAL_CHARS = 100_000


def normalize_turns(raw) -> Optional[list[dict[str, str]]]:
    """`raw` turns as role/content messages; None if a turn has no known role or no text field."""
    if not isinstance(raw, list):
        return None
    turns = []
    for turn in raw:
        role = _role(turn)
        if role is None or not isinstance(_content(turn), str):
            return None
        turns.append(keep_marks(turn, {"role": role, "content": _content(turn)}))
    return turns


def conversation_problem(row: dict, turns: Optional[list[dict[str, str]]], language: Optional[str]) -> Optional[str]:
    """The name of the first filter that drops this conversation, or None to keep it.

    `row` is the source record: WildChat marks `language`, and `toxic` and `redacted` per conversation and per turn.
    """
    raw = raw_turns(row) or []
    if turns is None:
        return "unreadable"
    if language is not None and str(row.get("language", "")).strip().lower() != language.lower():
        return "language"
    if row.get("toxic") or any(isinstance(t, dict) and t.get("toxic") for t in raw):
        return "toxic"
    if row.get("redacted") or any(isinstance(t, dict) and t.get("redacted") for t in raw):
        return "redacted"
    if any(not t["content"].strip() for t in turns):
        return "empty_turn"
    if any(t.get("truncated") for t in turns):
        return "truncated"
    if order_problem([t["role"] for t in turns]) is not None:
        return "roles_out_of_order"
    if len([t for t in turns if t["role"] != "system"]) < 3:
        return "no_reply"  # a sample needs a user turn after an assistant turn
    if any(len(t["content"]) > MAX_TURN_CHARS for t in turns):
        return "turn_too_long"
    if sum(len(t["content"]) for t in turns) > MAX_TOTAL_CHARS:
        return "too_long"
    return None


def held_out_rank(key: str) -> int:
    """A stable, seed-free number in [0, 10000) for a conversation's key: the lower, the sooner it is held out."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10_000


def is_held_out(key: str, percent: float) -> bool:
    """A stable, seed-free choice of the held-out conversations: the same key always lands in the same split."""
    return held_out_rank(key) < percent * 100
