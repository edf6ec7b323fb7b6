"""The live server without HTTP: what a chat request does (checks, pairing, generation, storage), what a user may
read, and the admin's operations. `LiveService.build` loads everything and resumes from the data folder.

Order of a chat request: every limit is checked first (nothing is stored for a refused request); then the request's
reaction to an earlier answer, if any, is stored as a pending sample; then the answer is generated and stored with
the adapter version that wrote it and its sampling log-probs, before the client receives its end. So an answer a
client has seen to the end is on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from transformers import AutoTokenizer

from sdpo_interactions.core.hindsight import ChatContexts
from sdpo_interactions.live import history, protocol
from sdpo_interactions.live.adapters import AdapterFiles, load_weights, lora_config, peft_model, resolve_device
from sdpo_interactions.live.adapters import resolve_dtype
from sdpo_interactions.live.engine import SHARED, Completion, Engine, GenerationJob
from sdpo_interactions.live.learner import Learner, TrainingModel
from sdpo_interactions.live.logps import scoring_temperature
from sdpo_interactions.live.pairing import adapter_name, follow_up, message_key
from sdpo_interactions.live.settings import VLLM_KEY_VARIABLE, LiveArguments, LiveKeys
from sdpo_interactions.live.step import SDPOUpdate
from sdpo_interactions.live.store import Generation, Store, new_id
from sdpo_interactions.live.telemetry import Telemetry
from sdpo_interactions.live.vllm_engine import VllmEngine

logger = logging.getLogger(__name__)
STORE_NAME = "live.sqlite3"


@dataclass
class Chat:
    """A checked chat request, ready to generate."""

    user_id: str
    messages: list[dict[str, str]]
    prompt_ids: list[int]
    adapter: str
    parent: Optional[dict]  # the generation this request reacts to: id and conversation_id
    temperature: float
    top_p: float
    max_tokens: int
    stream: bool
    include_usage: bool


def store_path(data_dir: str) -> Path:
    return Path(data_dir) / STORE_NAME


class LiveService:
    def __init__(self, args: LiveArguments, keys: LiveKeys, *, store: Store, files: AdapterFiles,
                 engine: Union[Engine, VllmEngine], contexts: ChatContexts, learner: Optional[Learner],
                 telemetry: Telemetry):
        self.args, self.keys, self.store, self.files, self.engine = args, keys, store, files, engine
        self.contexts, self.learner, self.telemetry = contexts, learner, telemetry
        self.created = int(time.time())
        self.limits = protocol.Limits(args.max_request_bytes, args.max_message_chars, args.max_messages,
                                      args.max_prompt_tokens, args.max_completion_tokens)

    @classmethod
    def build(cls, args: LiveArguments, keys: LiveKeys) -> "LiveService":
        """Open the store (recovering from a crash), load the models and the published adapters."""
        store = Store(store_path(args.data_dir))
        logger.info("Store %s: %s", store.path, store.recover())
        files = AdapterFiles(Path(args.data_dir) / "adapters")
        files.remove_unrecorded(store.version_paths())
        device, tokenizer = resolve_device(args.device), AutoTokenizer.from_pretrained(args.model_name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype, config = resolve_dtype(args.dtype, device), lora_config(args, args.adapter_path)
        contexts = ChatContexts(tokenizer, chat_template_kwargs=args.chat_template_kwargs,
                                hindsight_template=args.hindsight_template,
                                max_teacher_prompt_length=args.max_teacher_prompt_length)
        torch.manual_seed(args.seed)
        first = peft_model(args.model_name_or_path, config, SHARED, device=device, dtype=dtype)
        if SHARED not in store.published_versions():  # the first start: the starting adapter is version 0
            if args.adapter_path:
                load_weights(first, SHARED, args.adapter_path, config)
            store.add_version(SHARED, 0, files.save(first, SHARED, SHARED, 0, None), None)
        if args.generation_backend == "vllm":
            del first  # vLLM holds the serving copy
            engine = VllmEngine(args.vllm_url, os.environ.get(VLLM_KEY_VARIABLE), versions=store.published_versions(),
                                max_concurrency=args.vllm_max_concurrency)
        else:
            engine = Engine(first, tokenizer, device=device, batch_size=args.generation_batch_size,
                            lora_config=config, versions=store.published_versions())
        telemetry = Telemetry(store, engine.served_versions)
        learner = None
        if args.learn:
            learner = cls._learner(args, store, files, contexts, engine, telemetry, config, device, dtype)
        return cls(args, keys, store=store, files=files, engine=engine, contexts=contexts, learner=learner,
                   telemetry=telemetry)

    @staticmethod
    def _learner(args, store, files, contexts, engine, telemetry, config, device, dtype) -> Learner:
        """The learner's own copy of the model, its shared adapter as last published, and the teacher built on it
        (an EMA teacher starts from it, then from the state that version kept)."""
        model = peft_model(args.model_name_or_path, config, SHARED, device=device, dtype=dtype)
        training = TrainingModel(model, args, store, files, config)
        training.activate(SHARED)
        update = SDPOUpdate(model, contexts, args, pad_id=contexts.tokenizer.pad_token_id, device=device)
        update.restore_teacher(training.published_folder(SHARED))
        return Learner(args, store, training, update, engine, telemetry)

    def start(self) -> None:
        self.engine.start()
        if self.learner is not None:
            self.learner.start()

    def stop(self) -> None:
        if self.learner is not None:
            self.learner.stop()
        self.engine.stop()
        self.store.close()

    # -- a chat request ----------------------------------------------------------------------------------------

    def prepare(self, raw: bytes) -> Chat:
        """Check the request (raising `ApiError`), then store its reaction to an earlier answer as a sample."""
        request = protocol.parse_request(raw, self.limits)
        messages = protocol.checked_messages(request, self.limits)
        user_id, budget = protocol.checked_options(request, self.limits)
        if request.model != self.args.served_model_name:
            raise protocol.ApiError(404, f"The model {request.model!r} does not exist; this server serves "
                                    f"{self.args.served_model_name!r}", param="model", code="model_not_found")
        prompt_ids = self.contexts.token_ids([self.contexts.render(messages)])[0]
        protocol.check_prompt_tokens(len(prompt_ids), self.limits)
        adapter, parent = adapter_name(user_id, self.args.per_user_adapters), None
        reaction = follow_up(user_id, messages)
        if reaction is not None:
            parent = self.store.find_generation(reaction.key)
        if parent is not None and self.store.add_sample(parent["id"], user_id, adapter, reaction.feedback):
            self.telemetry.samples_created.inc()
            if self.learner is not None:
                self.learner.notify()
        return Chat(user_id, messages, prompt_ids, adapter, dict(parent) if parent is not None else None,
                    self.args.temperature if request.temperature is None else request.temperature,
                    self.args.top_p if request.top_p is None else request.top_p, budget, request.stream,
                    bool(request.stream_options and request.stream_options.include_usage))

    def submit(self, chat: Chat, on_text: Optional[Callable[[str], None]] = None):
        return self.engine.submit(GenerationJob(chat.prompt_ids, chat.adapter, chat.temperature, chat.top_p,
                                                chat.max_tokens, on_text))

    def record(self, chat: Chat, completion: Completion, seconds: float) -> protocol.Served:
        """Store the answer (and a new conversation for a first answer); returns who wrote it."""
        conversation = chat.parent["conversation_id"] if chat.parent else new_id()
        generation = Generation(
            new_id(), conversation, chat.parent["id"] if chat.parent else None, chat.user_id,
            message_key(chat.user_id, chat.messages, completion.text), chat.messages, completion.text,
            completion.finish_reason, completion.adapter, completion.adapter_version, completion.token_ids,
            completion.logps, scoring_temperature(chat.temperature))
        self.store.add_generation(generation)
        self.telemetry.prompt_tokens.inc(completion.prompt_tokens)
        self.telemetry.generation_tokens.inc(len(completion.token_ids))
        self.telemetry.completion_seconds.observe(seconds)
        return protocol.Served(generation.id, conversation, completion.adapter, completion.adapter_version)

    # -- what a user may read, and the admin's operations -------------------------------------------------------

    def me(self, user_id: str) -> dict:
        adapter = adapter_name(user_id, self.args.per_user_adapters)
        served = self.engine.served_versions()
        serving = adapter if adapter in served else SHARED
        return {"user": user_id, "adapter": serving, "adapter_version": served[serving],
                "samples": self.store.sample_counts(user_id)}

    def conversations(self, user_id: str) -> list[dict]:
        return history.user_conversations(self.store, user_id)

    def conversation(self, user_id: str, conversation_id: str) -> dict:
        found = history.user_conversation(self.store, user_id, conversation_id)
        if found is None:  # another user's conversation reads exactly as a missing one
            raise protocol.ApiError(404, f"No conversation {conversation_id!r} for this user", code="not_found")
        return found

    def delete_user(self, user_id: str) -> dict:
        """The user's conversations, samples and (per-user mode) adapter, with no update of it in progress."""
        adapter = adapter_name(user_id, self.args.per_user_adapters)
        with self.learner.lock if self.learner is not None else contextlib.nullcontext():
            counts = self.store.delete_user(user_id)
            if adapter != SHARED:
                self.engine.forget(adapter).result(timeout=600)
                if self.learner is not None:
                    self.learner.training.drop(adapter)
                self.files.remove_adapter(adapter)
        logger.info("Deleted a user's data: %s", counts)
        return counts

    def status(self) -> dict:
        updates = [dict(r) for r in self.store.query(
            "SELECT id, adapter, state, version, reason, started, finished FROM updates ORDER BY id DESC LIMIT 20")]
        running = self.store.query("SELECT COUNT(*) AS n FROM updates WHERE state = 'running'")[0]["n"]
        return {"served_versions": self.engine.served_versions(), "samples": self.store.sample_counts(),
                "running_updates": running, "recent_updates": updates}
