"""The serving side: one worker thread owns the serving model, generates queued requests in batches, streams each
answer's text as it is sampled, logs each answer's per-token log-probs with the weights that sampled it, and swaps
in newly published adapter versions between batches, so a new version never interrupts a request and every answer
records the exact version that wrote it.

The serving model is a PEFT model with one LoRA slot per adapter ("shared", or one per user); a user whose adapter
has no published version yet is served by the shared one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from transformers.generation.streamers import BaseStreamer

from sdpo_interactions.core.batch import pad_rows
from sdpo_interactions.live.adapters import load_weights
from sdpo_interactions.live.logps import answer_logps
from sdpo_interactions.sampling import Sampling, generate_exactly

logger = logging.getLogger(__name__)
SHARED = "shared"


@dataclass
class GenerationJob:
    """One request to answer; `on_text` (called from the worker thread) receives the answer's text piece by piece."""

    prompt_ids: list[int]
    adapter: str
    temperature: float
    top_p: float
    max_new_tokens: int
    on_text: Optional[Callable[[str], None]] = None
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]  # as sampled, the end-of-sequence token included when the answer ended
    logps: list[float]  # log p(token | prompt, earlier tokens) under the weights that sampled it
    text: str  # exactly the text streamed to the client
    finish_reason: str  # "stop" or "length"
    adapter: str
    adapter_version: int
    prompt_tokens: int


class BatchStreamer(BaseStreamer):
    """transformers' streamer interface for a whole batch: each row's tokens up to its end-of-sequence token or its
    own token budget, and its text sent on as it grows (held back while a character is incomplete)."""

    def __init__(self, tokenizer, jobs: list[GenerationJob], eos_ids: set[int]):
        self.tokenizer, self.jobs, self.eos_ids = tokenizer, jobs, eos_ids
        self.rows: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.done = [False] * len(jobs)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        for i, token in enumerate(value.view(-1).tolist()):
            if self.done[i]:
                continue
            self.rows[i].append(token)
            self.done[i] = token in self.eos_ids or len(self.rows[i]) >= self.jobs[i].max_new_tokens
            self._emit(i, final=False)

    def end(self) -> None:
        for i in range(len(self.jobs)):
            self._emit(i, final=True)

    def _emit(self, i: int, *, final: bool) -> None:
        text = self.text(i)
        if (not final and text.endswith("\ufffd")) or not text.startswith(self.sent[i]):
            return  # an incomplete character, or a decode that changed earlier text: wait for more
        delta, self.sent[i] = text[len(self.sent[i]):], text
        if delta and self.jobs[i].on_text is not None:
            try:
                self.jobs[i].on_text(delta)
            except RuntimeError:  # its event loop is gone (shutdown): the answer is still finished and stored
                logger.warning("A streamed answer's receiver is gone; finishing it without streaming")
                self.jobs[i].on_text = None

    def text(self, i: int) -> str:
        ids = [t for t in self.rows[i] if t not in self.eos_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def completion(self, i: int) -> tuple[list[int], str, str]:
        """Row i's tokens, the text the client received, and why the answer ended."""
        ended = bool(self.rows[i]) and self.rows[i][-1] in self.eos_ids
        return self.rows[i], self.sent[i], "stop" if ended else "length"


class Engine:
    """Owns the serving model; `submit` and `publish` may be called from any thread."""

    def __init__(self, model, tokenizer, *, device: torch.device, batch_size: int, lora_config,
                 versions: dict[str, tuple[int, str]]):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.batch_size, self.lora_config = batch_size, lora_config
        self.eos_ids = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.versions: dict[str, int] = {}
        self.jobs: "queue.Queue[GenerationJob]" = queue.Queue()
        self.swaps: "queue.Queue[tuple[Callable[[], None], Future]]" = queue.Queue()
        self.waiting: deque[GenerationJob] = deque()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sdpo-live-engine", daemon=True)
        for adapter, (version, folder) in versions.items():
            self._load(adapter, version, folder)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)

    def submit(self, job: GenerationJob) -> Future:
        if self.stopping.is_set():
            raise RuntimeError("the server is shutting down")
        self.jobs.put(job)
        return job.future

    def served_versions(self) -> dict[str, int]:
        return dict(self.versions)

    def publish(self, adapter: str, version: int, folder: str) -> Future:
        """Serve `version` of `adapter` from the next batch on; the future completes once it is in place."""
        return self._between_batches(lambda: self._load(adapter, version, folder))

    def forget(self, adapter: str) -> Future:
        """Stop serving an adapter (its user is served by the shared one again)."""
        return self._between_batches(lambda: self._drop(adapter))

    def _between_batches(self, action: Callable[[], None]) -> Future:
        done: Future = Future()
        self.swaps.put((action, done))
        return done

    def _load(self, adapter: str, version: int, folder: str) -> None:
        load_weights(self.model, adapter, folder, self.lora_config)
        self.versions[adapter] = version
        logger.info("Serving adapter %s version %d", adapter, version)

    def _drop(self, adapter: str) -> None:
        if adapter in self.versions and adapter != SHARED:
            self.model.delete_adapter(adapter)
            del self.versions[adapter]

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self._apply_swaps()
            batch = self._take_batch()
            if batch:
                self._run(batch)  # never raises: a failed batch fails its requests, and serving goes on
        for job in [*self.waiting, *_drain(self.jobs)]:
            job.future.set_exception(RuntimeError("the server is shutting down"))

    def _apply_swaps(self) -> None:
        for action, done in _drain(self.swaps):
            carry_out(action, done)

    def _slot(self, job: GenerationJob) -> str:
        return job.adapter if job.adapter in self.versions else SHARED

    def _take_batch(self) -> list[GenerationJob]:
        """The oldest waiting request and up to batch_size - 1 more that share its adapter and sampling."""
        self.waiting.extend(_drain(self.jobs))
        if not self.waiting:
            try:
                self.waiting.append(self.jobs.get(timeout=0.1))
            except queue.Empty:
                return []
        first = self.waiting.popleft()
        key = (self._slot(first), first.temperature, first.top_p)
        batch, others = [first], deque()
        while self.waiting:
            job = self.waiting.popleft()
            same = len(batch) < self.batch_size and (self._slot(job), job.temperature, job.top_p) == key
            (batch if same else others).append(job)
        self.waiting = others
        return batch

    def _run(self, batch: list[GenerationJob]) -> None:
        try:
            results = self._generate(batch)
        except Exception as err:  # each waiting request gets the error; the server keeps serving
            logger.exception("Generation failed for a batch of %d", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)

    def _generate(self, batch: list[GenerationJob]) -> list[Completion]:
        slot, first = self._slot(batch[0]), batch[0]
        self.model.set_adapter(slot)
        ids, mask = pad_rows([j.prompt_ids for j in batch], "left", pad_value=self.pad_id, device=self.device)
        config = Sampling(temperature=first.temperature, top_p=first.top_p).generation_config(
            max(j.max_new_tokens for j in batch), self.pad_id, sorted(self.eos_ids))
        streamer = BatchStreamer(self.tokenizer, batch, self.eos_ids)
        generate_exactly(self.model, {"input_ids": ids, "attention_mask": mask, "streamer": streamer}, config)
        rows = [streamer.completion(i) for i in range(len(batch))]
        logps = answer_logps(self.model, [j.prompt_ids for j in batch], [r[0] for r in rows], first.temperature,
                             pad_id=self.pad_id, device=self.device)
        return [Completion(tokens, lp, text, reason, slot, self.versions[slot], len(job.prompt_ids))
                for job, (tokens, text, reason), lp in zip(batch, rows, logps)]


def carry_out(action: Callable[[], None], done: Future) -> Future:
    """Run an adapter swap and report how it went on `done`; a failed swap leaves serving as it was."""
    try:
        action()
        done.set_result(None)
    except Exception as err:  # reported to whoever asked for the swap; serving goes on unchanged
        logger.exception("Adapter swap failed")
        done.set_exception(err)
    return done


def _as_list(value) -> list[int]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _drain(q: queue.Queue) -> list:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
