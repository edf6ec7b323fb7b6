"""The live server's state in one SQLite file in WAL mode: conversations, every generation (the adapter version that
wrote it and its per-token log-probs at sampling time), samples and their state, updates with their monitors, and
published adapter versions.

A sample moves pending -> claimed (by one update) -> trained (the update was published) or rejected (a monitor
tripped, or the update failed). Each move is one transaction, and publishing an adapter version marks its samples
trained in the same transaction, so after a crash at any moment `recover` puts the samples of an unfinished update
back to pending: none is trained twice, none is skipped. Commits are synchronous (`synchronous=FULL`): a generation
the server has answered is on disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS conversations_user ON conversations(user_id);
CREATE TABLE IF NOT EXISTS generations (
    id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id TEXT, user_id TEXT NOT NULL, message_key TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
    finish_reason TEXT NOT NULL, adapter TEXT NOT NULL, adapter_version INTEGER NOT NULL, token_ids TEXT NOT NULL,
    logps TEXT NOT NULL, temperature REAL NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS generations_key ON generations(message_key);
CREATE INDEX IF NOT EXISTS generations_conversation ON generations(conversation_id);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    generation_id TEXT NOT NULL REFERENCES generations(id) ON DELETE CASCADE, user_id TEXT NOT NULL,
    adapter TEXT NOT NULL, feedback TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'claimed', 'trained', 'rejected')),
    update_id INTEGER, created REAL NOT NULL, UNIQUE (generation_id, feedback));
CREATE INDEX IF NOT EXISTS samples_state ON samples(state, adapter);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, adapter TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'published', 'rejected', 'failed', 'interrupted')),
    started REAL NOT NULL, finished REAL, version INTEGER, monitors TEXT, metrics TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS update_samples (
    update_id INTEGER NOT NULL, sample_id INTEGER NOT NULL, PRIMARY KEY (update_id, sample_id));
CREATE TABLE IF NOT EXISTS adapter_versions (
    adapter TEXT NOT NULL, version INTEGER NOT NULL, user_id TEXT, path TEXT NOT NULL, update_id INTEGER,
    created REAL NOT NULL, PRIMARY KEY (adapter, version));
"""


PENDING = ("FROM samples s JOIN generations g ON g.id = s.generation_id "
           "WHERE s.state = 'pending' AND s.adapter = ?")


@dataclass(frozen=True)
class Generation:
    """One answer the server wrote, as stored."""

    id: str
    conversation_id: str
    parent_id: Optional[str]
    user_id: str
    message_key: str
    prompt: list[dict[str, str]]
    answer: str
    finish_reason: str
    adapter: str
    adapter_version: int
    token_ids: list[int]
    logps: list[float]
    temperature: float  # the temperature `logps` are taken at (the sampling temperature, 1 for greedy answers)


@dataclass(frozen=True)
class ClaimedSample:
    """A sample as an update trains it: x (the prompt the answer followed), y as sampled, o."""

    id: int
    user_id: str
    prompt: list[dict[str, str]]
    answer: str
    token_ids: list[int]
    logps: list[float]
    temperature: float
    feedback: str


def new_id() -> str:
    return uuid.uuid4().hex


class Store:
    """All reads and writes of the live state. One connection, used under a lock by the request handlers and the
    learner alike: every statement is short, and WAL keeps readers of other processes (an export) unblocked."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, parameters=()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()

    # -- after a restart -------------------------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Put the samples of updates a crash left unfinished back to pending; returns what was recovered."""
        with self.transaction() as db:
            updates = db.execute("UPDATE updates SET state = 'interrupted', finished = ? WHERE state = 'running'",
                                 (time.time(),)).rowcount
            samples = db.execute("UPDATE samples SET state = 'pending', update_id = NULL WHERE state = 'claimed'"
                                 ).rowcount
        return {"interrupted_updates": updates, "samples_back_to_pending": samples}

    # -- generations and samples -----------------------------------------------------------------------------------

    def find_generation(self, message_key: str) -> Optional[sqlite3.Row]:
        """The latest generation with this key (the same answer to the same history may have been written twice)."""
        rows = self.query("SELECT id, conversation_id FROM generations WHERE message_key = ? "
                          "ORDER BY created DESC LIMIT 1", (message_key,))
        return rows[0] if rows else None

    def add_sample(self, generation_id: str, user_id: str, adapter: str, feedback: str) -> Optional[int]:
        """A new pending sample; None when this very reaction to this answer is stored already (a retried request)."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO samples (generation_id, user_id, adapter, feedback, state, created) "
                "VALUES (?, ?, ?, ?, 'pending', ?)", (generation_id, user_id, adapter, feedback, time.time()))
            return cursor.lastrowid if cursor.rowcount else None

    def add_generation(self, g: Generation) -> None:
        """The answer and, for the first answer of a conversation, the conversation, in one transaction."""
        now = time.time()
        with self.transaction() as db:
            if g.parent_id is None:
                db.execute("INSERT INTO conversations (id, user_id, created) VALUES (?, ?, ?)",
                           (g.conversation_id, g.user_id, now))
            db.execute(
                "INSERT INTO generations (id, conversation_id, parent_id, user_id, message_key, prompt, answer, "
                "finish_reason, adapter, adapter_version, token_ids, logps, temperature, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (g.id, g.conversation_id, g.parent_id, g.user_id, g.message_key, json.dumps(g.prompt),
                 g.answer, g.finish_reason, g.adapter, g.adapter_version, json.dumps(g.token_ids),
                 json.dumps(g.logps), g.temperature, now))

    # -- updates ---------------------------------------------------------------------------------------------------

    def due_adapter(self, batch: int, max_wait: float, min_gap: float, now: float) -> tuple[Optional[str], float]:
        """The adapter whose pending samples make an update now, oldest first, and else how long to wait at most.

        Due: a full batch, or a sample that has waited `max_wait`; and the adapter's last update ended `min_gap`
        seconds ago or more (the update-rate cap).
        """
        pending = self.query("SELECT adapter, COUNT(*) AS n, MIN(created) AS oldest FROM samples "
                             "WHERE state = 'pending' GROUP BY adapter ORDER BY oldest")
        wait = max_wait
        for row in pending:
            last = self.query("SELECT MAX(finished) AS t FROM updates WHERE adapter = ?", (row["adapter"],))[0]["t"]
            ready_at = max(row["oldest"] + max_wait if row["n"] < batch else now, (last or 0) + min_gap)
            if ready_at <= now:
                return row["adapter"], 0.0
            wait = min(wait, ready_at - now)
        return None, wait

    def claim(self, adapter: str, limit: int) -> tuple[int, list[ClaimedSample]]:
        """Start an update: its row, and up to `limit` of the adapter's oldest pending samples claimed by it, all
        scored at one temperature (that of the oldest)."""
        with self.transaction() as db:
            update_id = db.execute("INSERT INTO updates (adapter, state, started) VALUES (?, 'running', ?)",
                                   (adapter, time.time())).lastrowid
            rows = db.execute(
                f"SELECT s.id, s.user_id, s.feedback, g.prompt, g.answer, g.token_ids, g.logps, g.temperature "
                f"{PENDING} AND g.temperature = (SELECT g.temperature {PENDING} ORDER BY s.id LIMIT 1) "
                "ORDER BY s.id LIMIT ?", (adapter, adapter, limit)).fetchall()
            for row in rows:
                db.execute("UPDATE samples SET state = 'claimed', update_id = ? WHERE id = ?", (update_id, row["id"]))
                db.execute("INSERT INTO update_samples (update_id, sample_id) VALUES (?, ?)", (update_id, row["id"]))
        return update_id, [ClaimedSample(r["id"], r["user_id"], json.loads(r["prompt"]), r["answer"],
                                         json.loads(r["token_ids"]), json.loads(r["logps"]), r["temperature"],
                                         r["feedback"]) for r in rows]

    def publish(self, update_id: int, adapter: str, version: int, path: str, user_id: Optional[str], *,
                monitors: list[dict], metrics: dict) -> None:
        """The adapter version is published and its samples trained, at once."""
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO adapter_versions (adapter, version, user_id, path, update_id, created) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (adapter, version, user_id, path, update_id, now))
            db.execute("UPDATE samples SET state = 'trained' WHERE update_id = ? AND state = 'claimed'", (update_id,))
            db.execute("UPDATE updates SET state = 'published', finished = ?, version = ?, monitors = ?, metrics = ? "
                       "WHERE id = ?", (now, version, json.dumps(monitors), json.dumps(metrics), update_id))

    def reject(self, update_id: int, state: str, reason: str, *, monitors: list[dict], metrics: dict) -> None:
        """The update is not published (`rejected` by a monitor, or `failed`); its samples are not trained."""
        with self.transaction() as db:
            db.execute("UPDATE samples SET state = 'rejected' WHERE update_id = ? AND state = 'claimed'", (update_id,))
            db.execute("UPDATE updates SET state = ?, finished = ?, reason = ?, monitors = ?, metrics = ? WHERE id = ?",
                       (state, time.time(), reason, json.dumps(monitors), json.dumps(metrics), update_id))

    def published_versions(self) -> dict[str, tuple[int, str]]:
        """adapter -> (its latest published version, that version's folder)."""
        rows = self.query("SELECT adapter, version, path FROM adapter_versions a WHERE version = "
                          "(SELECT MAX(version) FROM adapter_versions b WHERE b.adapter = a.adapter)")
        return {r["adapter"]: (r["version"], r["path"]) for r in rows}

    def version_paths(self) -> set[str]:
        return {r["path"] for r in self.query("SELECT path FROM adapter_versions")}

    def add_version(self, adapter: str, version: int, path: str, user_id: Optional[str]) -> None:
        """A version published without an update: the starting adapter, version 0."""
        with self.transaction() as db:
            db.execute("INSERT INTO adapter_versions (adapter, version, user_id, path, created) VALUES (?, ?, ?, ?, ?)",
                       (adapter, version, user_id, path, time.time()))

    # -- what a user may see, and deleting a user ------------------------------------------------------------------

    def sample_counts(self, user_id: Optional[str] = None) -> dict[str, int]:
        where, parameters = ("WHERE user_id = ?", (user_id,)) if user_id is not None else ("", ())
        counts = {state: 0 for state in ("pending", "claimed", "trained", "rejected")}
        counts.update({r["state"]: r["n"] for r in self.query(
            f"SELECT state, COUNT(*) AS n FROM samples {where} GROUP BY state", parameters)})
        return counts

    def delete_user(self, user_id: str) -> dict[str, int]:
        """Every conversation, generation and sample of the user, and the user's adapter versions (rows only: the
        caller removes the folders). Updates keep their numbers for the record, not the user's text."""
        with self.transaction() as db:
            samples = [r["id"] for r in db.execute("SELECT id FROM samples WHERE user_id = ?", (user_id,))]
            db.executemany("DELETE FROM update_samples WHERE sample_id = ?", [(s,) for s in samples])
            counts = {"samples": db.execute("DELETE FROM samples WHERE user_id = ?", (user_id,)).rowcount}
            counts["generations"] = db.execute("DELETE FROM generations WHERE user_id = ?", (user_id,)).rowcount
            counts["conversations"] = db.execute("DELETE FROM conversations WHERE user_id = ?", (user_id,)).rowcount
            counts["adapter_versions"] = db.execute("DELETE FROM adapter_versions WHERE user_id = ?",
                                                    (user_id,)).rowcount
        return counts
