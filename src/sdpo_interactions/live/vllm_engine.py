"""The serving side on a vLLM server instead of in-process transformers: same interface as `engine.Engine`.

vLLM serves the base model with every published adapter version as a LoRA adapter, loaded at run time
(`/v1/load_lora_adapter`, which needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) under the name `<adapter>-v<version>`;
a request for an adapter goes to its newest loaded version, and an older version is unloaded once no request still
uses it, so publishing drops no request. Prompts are sent as the token ids this server rendered (`/v1/completions`),
and each sampled token comes back with its id (`return_tokens_as_token_ids`) and log-prob, which vLLM computes at
the request's temperature when it runs with `--logprobs-mode processed_logprobs` (as TRL's colocated vLLM does).
Those log-probs are then the behaviour policy of the sample, as the in-process engine's are; vLLM's kernels round
differently from the learner's forward pass, which the importance ratio then measures and its clip bounds.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

import httpx

from sdpo_interactions.live.engine import SHARED, Completion, GenerationJob, carry_out

logger = logging.getLogger(__name__)


def token_id(token: str) -> int:
    """vLLM's `token_id:123` form of a sampled token (with `return_tokens_as_token_ids`)."""
    prefix, _, number = token.partition(":")
    if prefix != "token_id" or not number.lstrip("-").isdigit():
        raise ValueError(f"expected a token as 'token_id:N' (return_tokens_as_token_ids), got {token!r}")
    return int(number)


class VllmEngine:
    """Generation through `vllm serve` at `base_url` (…/v1); `submit` and `publish` may be called from any thread."""

    def __init__(self, base_url: str, api_key: Optional[str], *, versions: dict[str, tuple[int, str]],
                 max_concurrency: int, timeout: float = 600.0):
        import openai

        self.base_url = base_url.rstrip("/")
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout)
        self.http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="sdpo-live-vllm")
        self.lock = threading.Lock()
        self.versions: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}  # loaded LoRA name -> requests using it
        self.retired: set[str] = set()  # older versions to unload once idle
        for adapter, (version, folder) in versions.items():
            self._load(adapter, version, folder)

    def start(self) -> None:
        pass  # the pool's threads start with the first request

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.http.close()

    def served_versions(self) -> dict[str, int]:
        with self.lock:
            return dict(self.versions)

    def submit(self, job: GenerationJob) -> Future:
        return self.pool.submit(self._generate, job)

    def publish(self, adapter: str, version: int, folder: str) -> Future:
        return carry_out(lambda: self._load(adapter, version, folder), Future())

    def forget(self, adapter: str) -> Future:
        def drop():
            with self.lock:
                version = self.versions.pop(adapter, None) if adapter != SHARED else None
            if version is not None:
                self._retire(f"{adapter}-v{version}")
        return carry_out(drop, Future())

    def _post(self, path: str, body: dict) -> None:
        reply = self.http.post(f"{self.base_url}/{path}", json=body)
        if reply.status_code != 200:
            raise RuntimeError(f"vLLM {path}: {reply.status_code} {reply.text[:300]}")

    def _load(self, adapter: str, version: int, folder: str) -> None:
        self._post("load_lora_adapter", {"lora_name": f"{adapter}-v{version}", "lora_path": folder})
        with self.lock:
            old = self.versions.get(adapter)
            self.versions[adapter] = version
        if old is not None and old != version:
            self._retire(f"{adapter}-v{old}")
        logger.info("vLLM serves adapter %s version %d", adapter, version)

    def _retire(self, name: str) -> None:
        with self.lock:
            self.retired.add(name)
        self._unload_idle()

    def _unload_idle(self) -> None:
        with self.lock:
            idle = [n for n in self.retired if not self.in_flight.get(n)]
            self.retired -= set(idle)
        for name in idle:
            self._post("unload_lora_adapter", {"lora_name": name})

    def _generate(self, job: GenerationJob) -> Completion:
        with self.lock:
            adapter = job.adapter if job.adapter in self.versions else SHARED
            version = self.versions[adapter]
            name = f"{adapter}-v{version}"
            self.in_flight[name] = self.in_flight.get(name, 0) + 1
        try:
            return self._sample(job, name, adapter, version)
        finally:
            with self.lock:
                self.in_flight[name] -= 1
            self._unload_idle()

    def _sample(self, job: GenerationJob, name: str, adapter: str, version: int) -> Completion:
        stream = self.client.completions.create(
            model=name, prompt=job.prompt_ids, max_tokens=job.max_new_tokens, temperature=job.temperature,
            top_p=job.top_p, logprobs=0, stream=True, extra_body={"return_tokens_as_token_ids": True})
        tokens, logps, text, finish = [], [], [], "length"
        for chunk in stream:
            choice = chunk.choices[0]
            if choice.logprobs is not None:
                tokens += [token_id(t) for t in choice.logprobs.tokens or []]
                logps += [float(v) for v in choice.logprobs.token_logprobs or []]
            if choice.text:
                text.append(choice.text)
                if job.on_text is not None:
                    job.on_text(choice.text)
            finish = choice.finish_reason or finish
        return Completion(tokens, logps, "".join(text), "stop" if finish == "stop" else "length", adapter, version,
                          len(job.prompt_ids))
