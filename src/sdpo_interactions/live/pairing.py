"""Which request makes a sample. Clients send the whole history with every request, so a history whose last
assistant message is one this server wrote, followed by the new user message, is the user's reaction o to that answer
y, with x the history before y. The server recognises its answers by a key stored when it wrote them: a hash of the
user id, the conversation before the answer and the answer itself. A client that re-renders whitespace around a
message still matches; one that edits the history or the answer does not (no sample, a new conversation).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional

Messages = list[dict[str, str]]


def message_key(user_id: str, prefix: Messages, answer: str) -> str:
    """The identity of an answer: sha256 over the user, each earlier message's role and text, and the answer, all
    with surrounding whitespace removed. The user is part of it, so no user can react to another user's answer."""
    payload = [user_id, [[m["role"], m["content"].strip()] for m in prefix], answer.strip()]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FollowUp:
    """A request's candidate sample: the answer it reacts to (found by `key`) and the reaction o."""

    key: str
    feedback: str


def follow_up(user_id: str, messages: Messages) -> Optional[FollowUp]:
    """The candidate sample of a request's messages, or None.

    A sample needs the history to end with an assistant message followed by the new user message, whose text is not
    empty; the key is looked up in the store to find out whether this server wrote that answer.
    """
    if len(messages) < 2 or messages[-1]["role"] != "user" or messages[-2]["role"] != "assistant":
        return None
    feedback = messages[-1]["content"]
    if not feedback.strip():
        return None
    return FollowUp(message_key(user_id, messages[:-2], messages[-2]["content"]), feedback)


def adapter_name(user_id: str, per_user: bool) -> str:
    """The adapter a user's samples train and that serves the user: one shared adapter, or the user's own, named
    by a hash so that no user id (personal data) appears in file names, metrics or adapter names."""
    if not per_user:
        return "shared"
    return "u_" + hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:20]
