"""The stored conversations as a user sees them (each answer with the adapter version that wrote it and what became
of the user's reaction to it), and as train_offline.py reads them: the offline conversations format
(`sdpo_interactions.conversations`), one line per conversation branch, so a deployment's logs can be replayed.

A conversation is a tree of generations: each answer's parent is the answer the request reacted to. Its branches end
in leaves, answers nothing followed yet; a leaf's prompt holds the whole branch as the client sent it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Optional

from sdpo_interactions.conversations import record_problem
from sdpo_interactions.live.store import Store
from sdpo_interactions.run_files import jsonl_text, write_atomic

LEAVES = ("SELECT * FROM generations g WHERE NOT EXISTS (SELECT 1 FROM generations c WHERE c.parent_id = g.id)")


def _chain(store: Store, leaf: sqlite3.Row) -> list[sqlite3.Row]:
    """The leaf and its ancestors, oldest first."""
    chain = [leaf]
    while chain[0]["parent_id"] is not None:
        rows = store.query("SELECT * FROM generations WHERE id = ?", (chain[0]["parent_id"],))
        if not rows:
            break
        chain.insert(0, rows[0])
    return chain


def _branch_messages(chain: list[sqlite3.Row]) -> tuple[list[dict], dict[int, sqlite3.Row]]:
    """The branch's messages (the leaf's prompt and answer) and, by message index, the generations among them: an
    earlier answer counts only where the client sent it back as the server wrote it."""
    leaf = chain[-1]
    messages = json.loads(leaf["prompt"]) + [{"role": "assistant", "content": leaf["answer"]}]
    ours = {}
    for generation in chain:
        index = len(json.loads(generation["prompt"]))
        if index < len(messages) and messages[index]["role"] == "assistant" and \
                messages[index]["content"].strip() == generation["answer"].strip():
            ours[index] = generation
    return messages, ours


def _sample_view(store: Store, generation_id: str) -> Optional[dict]:
    rows = store.query("SELECT s.id, s.state, u.version FROM samples s LEFT JOIN updates u ON u.id = s.update_id "
                       "WHERE s.generation_id = ? ORDER BY s.id DESC LIMIT 1", (generation_id,))
    if not rows:
        return None
    row = rows[0]
    return {"id": row["id"], "state": row["state"],
            "learned_in_version": row["version"] if row["state"] == "trained" else None}


def user_conversations(store: Store, user_id: str) -> list[dict]:
    """The user's conversations, newest first: id, start time and the first request."""
    rows = store.query(
        "SELECT c.id, c.created, (SELECT g.prompt FROM generations g WHERE g.conversation_id = c.id "
        "ORDER BY g.created LIMIT 1) AS first_prompt FROM conversations c WHERE c.user_id = ? ORDER BY c.created DESC",
        (user_id,))
    out = []
    for row in rows:
        first_user = next((m["content"] for m in json.loads(row["first_prompt"] or "[]") if m["role"] == "user"), "")
        out.append({"id": row["id"], "created": row["created"], "title": first_user[:80]})
    return out


def user_conversation(store: Store, user_id: str, conversation_id: str) -> Optional[dict]:
    """The conversation's latest branch, each answer the server wrote annotated; None unless it is the user's."""
    rows = store.query("SELECT g.* FROM generations g JOIN conversations c ON c.id = g.conversation_id "
                       "WHERE c.id = ? AND c.user_id = ? ORDER BY g.created DESC LIMIT 1", (conversation_id, user_id))
    if not rows:
        return None
    messages, ours = _branch_messages(_chain(store, rows[0]))
    for index, generation in ours.items():
        messages[index] = {**messages[index], "generation_id": generation["id"], "adapter": generation["adapter"],
                           "adapter_version": generation["adapter_version"],
                           "finish_reason": generation["finish_reason"],
                           "sample": _sample_view(store, generation["id"])}
    return {"id": conversation_id, "messages": messages}


def export_records(store: Store) -> tuple[list[dict], int]:
    """Every branch as an offline conversation (`{"messages": [...]}`), with each stored reaction to its last answer
    as the closing user turn (one record per reaction), and the number of branches left out because their history,
    as the client sent it, is not in the format (user and assistant turns alternating after an optional system)."""
    records, skipped = [], 0
    for leaf in store.query(LEAVES + " ORDER BY g.created"):
        messages, ours = _branch_messages(_chain(store, leaf))
        for index, generation in ours.items():
            if generation["finish_reason"] == "length":  # the offline filter leaves cut-off answers out
                messages[index] = {**messages[index], "finish_reason": "length"}
        reactions = [r["feedback"] for r in store.query(
            "SELECT feedback FROM samples WHERE generation_id = ? ORDER BY id", (leaf["id"],))]
        for reaction in reactions or [None]:
            record = {"messages": messages + ([{"role": "user", "content": reaction}] if reaction else [])}
            if record_problem(record) is None:
                records.append(record)
            else:
                skipped += 1
    return records, skipped


def export_conversations(store: Store, path: str) -> tuple[int, int]:
    """Write the export atomically; returns (records written, branches left out)."""
    records, skipped = export_records(store)
    write_atomic(path, jsonl_text(records))
    return len(records), skipped
