"""The live server (`python -m sdpo_interactions.cli.serve_live`) as a real process on 127.0.0.1 for tests and
benchmarks, its store read back read-only, and the two drivers whose figures bench/bench_live_server.py prints: the
bounded load test (many concurrent OpenAI clients) and the crash test (kill -9 during an update, then restart).

    with LiveServer(model_dir, data_dir, log_path, "--samples_per_update", "2") as server:
        server.client().chat.completions.create(model=server.model, messages=[...], user="alice")
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdpo_interactions.testing.openai_server import free_port
from sdpo_interactions.testing.runs import subprocess_env

API_KEY = "live-chat-key-MARKER-5f2c9a1b7e"
ADMIN_KEY = "live-admin-key-MARKER-8d3e6b0c4a"
MODEL = "sdpo-live"


def tiny_model(folder: Path, source_model_dir: str) -> str:
    """A two-layer random Llama on the embedded model's tokenizer and chat template: for plumbing, not learning."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source_model_dir)
    config.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source_model_dir).save_pretrained(folder)
    return str(folder)


class LiveServer:
    """One live server process (its own session, one CPU thread) until `stop` or `kill`."""

    def __init__(self, model_dir: str, data_dir: Path, log_path: Path, *args: str, threads: int = 1,
                 startup_timeout: float = 300.0):
        self.model_dir, self.data_dir, self.log_path = str(model_dir), Path(data_dir), Path(log_path)
        self.args, self.threads, self.startup_timeout = list(args), threads, startup_timeout
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "live.sqlite3"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sdpo_interactions.cli.serve_live", "--model_name_or_path", self.model_dir,
                "--data_dir", str(self.data_dir), "--port", str(self.port), "--served_model_name", MODEL, *self.args]

    def start(self) -> "LiveServer":
        env = dict(subprocess_env(), OMP_NUM_THREADS=str(self.threads), LIVE_API_KEY=API_KEY, LIVE_ADMIN_KEY=ADMIN_KEY)
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the live server exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"the live server was not healthy after {self.startup_timeout} s")

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, as a service manager stops it; SIGKILL if it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """kill -9 of the whole process group: no handler, no cleanup, as a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait() if self.process is not None else 0

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self, api_key: str = API_KEY, **options):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=300, **options)

    def call(self, method: str, path: str, key: Optional[str] = ADMIN_KEY, body: Optional[bytes] = None,
             headers: Optional[dict] = None) -> tuple[int, bytes]:
        """A raw HTTP request: (status, body), errors included."""
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers=dict(headers or {}))
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=300) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def admin(self, method: str, path: str) -> dict:
        status, body = self.call(method, path)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def rows(self, sql: str, parameters=()) -> list[sqlite3.Row]:
        """The store read as another process would (read-only, alongside a running server thanks to WAL)."""
        db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, parameters).fetchall()
        finally:
            db.close()

    def wait_for(self, condition, timeout: float = 300.0, interval: float = 0.2, what: str = "a condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the live server exited while waiting for {what}:\n"
                                   f"{self.log_path.read_text()[-4000:]}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; log:\n"
                             f"{self.log_path.read_text()[-3000:]}")


def two_turn_conversation(client, user: str, request: str, reaction: str, max_tokens: int = 8,
                          served: Optional[list] = None) -> tuple[list[float], list[dict]]:
    """A request, the server's answer, the user's reaction (which makes a sample) and its answer; returns each
    request's latency and each answer's `sdpo` record (generation and conversation ids, adapter version), which
    are also appended to `served` as each answer arrives."""
    messages, latencies, served = [{"role": "user", "content": request}], [], [] if served is None else served
    for follow in (reaction, None):
        started = time.perf_counter()
        reply = client.chat.completions.create(model=MODEL, messages=messages, user=user, max_tokens=max_tokens)
        latencies.append(time.perf_counter() - started)
        served.append(reply.model_extra["sdpo"])
        if follow is not None:
            messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": follow}]
    return latencies, served


@dataclass
class LoadFigures:
    clients: int
    conversations: int
    requests: int = 0
    errors: int = 0
    lost_conversations: int = 0
    lost_answers: int = 0
    samples: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=100)[int(q) - 1] if len(self.latencies) > 1 else 0.0

    def summary(self) -> dict:
        return {"clients": self.clients, "conversations_per_client": self.conversations, "requests": self.requests,
                "errors": self.errors, "lost_conversations": self.lost_conversations,
                "lost_answers": self.lost_answers, "samples": self.samples, "seconds": round(self.seconds, 1),
                "requests_per_second": round(self.requests / self.seconds, 2) if self.seconds else 0.0,
                "p50_latency_s": round(self.percentile(50), 3), "p95_latency_s": round(self.percentile(95), 3)}


def load_test(server: LiveServer, clients: int, conversations: int, max_tokens: int = 8) -> LoadFigures:
    """`clients` concurrent OpenAI clients, each holding `conversations` two-turn conversations; then every
    conversation and answer a client was given is looked up in the store (a missing one is lost)."""
    figures = LoadFigures(clients, conversations)

    def one_client(index: int) -> tuple[list[float], list[dict], int]:
        client, latencies, served, errors = server.client(), [], [], 0
        for k in range(conversations):
            try:
                took, answers = two_turn_conversation(client, f"load-{index}", f"Question {k} from client {index}?",
                                                      f"Thanks; shorter next time ({index}.{k}).", max_tokens)
                latencies += took
                served += answers
            except Exception:  # counted: the figure is the number of failed conversations
                errors += 1
        return latencies, served, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    figures.seconds = time.perf_counter() - started
    served = [s for _, answers, _ in results for s in answers]
    figures.latencies = [t for took, _, _ in results for t in took]
    figures.requests, figures.errors = len(figures.latencies), sum(e for _, _, e in results)
    stored_conversations = {r["id"] for r in server.rows("SELECT id FROM conversations")}
    stored_answers = {r["id"] for r in server.rows("SELECT id FROM generations")}
    figures.lost_conversations = len({s["conversation_id"] for s in served} - stored_conversations)
    figures.lost_answers = len({s["generation_id"] for s in served} - stored_answers)
    figures.samples = server.rows("SELECT COUNT(*) AS n FROM samples WHERE user_id LIKE 'load-%'")[0]["n"]
    return figures


def sample_audit(server: LiveServer) -> dict:
    """Over the whole store: samples trained by more than one published update (must be 0), samples neither
    trained, rejected nor still waiting (must be 0), and the counts by state."""
    twice = server.rows("SELECT us.sample_id FROM update_samples us JOIN updates u ON u.id = us.update_id "
                        "WHERE u.state = 'published' GROUP BY us.sample_id HAVING COUNT(*) > 1")
    trained_without_update = server.rows(
        "SELECT s.id FROM samples s WHERE s.state = 'trained' AND NOT EXISTS (SELECT 1 FROM update_samples us "
        "JOIN updates u ON u.id = us.update_id WHERE us.sample_id = s.id AND u.state = 'published')")
    states = {r["state"]: r["n"] for r in server.rows("SELECT state, COUNT(*) AS n FROM samples GROUP BY state")}
    return {"trained_twice": len(twice), "trained_without_update": len(trained_without_update), "states": states}


def _chat_until_stopped(server: LiveServer, acknowledged: list[dict], stop) -> None:
    """Two-turn conversations one after another, each answer the client received kept, until `stop` is set or
    the server goes away."""
    client, k = server.client(), 0
    while not stop.is_set():
        try:
            two_turn_conversation(client, "crash-user", f"Crash question {k}?", f"Reaction {k}: shorter.",
                                  served=acknowledged)
        except Exception:  # the server was killed: what the client had received before counts
            return
        k += 1


def crash_test(model_dir: str, data_dir: Path, log_path: Path, *args: str, after_published: int = 1,
               timeout: float = 600.0) -> dict:
    """kill -9 the server while an update runs (once `after_published` updates have been published), restart it,
    and count what a crash must not do: acknowledged answers lost, samples trained twice, samples of the
    interrupted update never trained (skipped), and whether the restarted server serves the last published
    version."""
    import threading

    acknowledged: list[dict] = []
    stop = threading.Event()
    server = LiveServer(model_dir, data_dir, log_path, *args).start()
    chatter = threading.Thread(target=_chat_until_stopped, args=(server, acknowledged, stop), daemon=True)
    chatter.start()
    try:
        running = server.wait_for(lambda: server.rows(
            "SELECT id FROM updates WHERE state = 'running' AND (SELECT COUNT(*) FROM updates WHERE state = "
            "'published') >= ?", (after_published,)), timeout=timeout, interval=0.01, what="an update to start")
    finally:
        server.kill()
        stop.set()
        chatter.join(timeout=60)
    interrupted = running[0]["id"]
    claimed = [r["id"] for r in server.rows("SELECT id FROM samples WHERE update_id = ?", (interrupted,))]
    published_before = server.rows("SELECT MAX(version) AS v FROM adapter_versions WHERE adapter = 'shared'")[0]["v"]
    with LiveServer(model_dir, data_dir, log_path, *args, "--learn", "false") as restarted:  # nothing moves here
        figures = _after_restart(restarted, acknowledged, interrupted, claimed, published_before)
    with LiveServer(model_dir, data_dir, log_path, *args) as learning:
        learning.wait_for(lambda: not learning.rows("SELECT 1 FROM samples WHERE state IN ('pending', 'claimed')"),
                          timeout=timeout, what="every sample to be trained or rejected")
        final = {r["id"]: r["state"] for r in learning.rows(
            f"SELECT id, state FROM samples WHERE id IN ({','.join('?' * len(claimed))})", claimed)}
        audit = sample_audit(learning)
    return {**figures, "skipped": sum(final.get(s) not in ("trained", "rejected") for s in claimed),
            "trained_twice": audit["trained_twice"], "trained_without_update": audit["trained_without_update"],
            "sample_states": audit["states"]}


def _after_restart(server: LiveServer, acknowledged: list[dict], interrupted: int, claimed: list[int],
                   published_before: int) -> dict:
    stored = {r["id"] for r in server.rows("SELECT id FROM generations")}
    served_after = server.admin("GET", "/admin/status")["served_versions"]["shared"]
    reply = server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Still there?"}],
                                                    user="crash-check", max_tokens=4)
    pending = server.rows(f"SELECT COUNT(*) AS n FROM samples WHERE state = 'pending' AND id IN "
                          f"({','.join('?' * len(claimed))})", claimed)[0]["n"]
    return {"acknowledged_answers": len(acknowledged),
            "lost_answers": len({s["generation_id"] for s in acknowledged} - stored),
            "interrupted_update": interrupted,
            "interrupted_update_state": server.rows("SELECT state FROM updates WHERE id = ?", (interrupted,))[0][0],
            "samples_of_interrupted_update": len(claimed), "back_to_pending": pending,
            "last_published_before_crash": published_before, "served_after_restart": served_after,
            "answer_after_restart_by": reply.system_fingerprint}
