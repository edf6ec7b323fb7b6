"""Simulated users behind a chat API: Claude (the paper's HelpSteer2 runs), or any OpenAI-compatible server.

An 8B user model served once by vLLM or SGLang (scripts/serve_user_simulator.sh) replaces a copy on every
training GPU: all ranks send their requests to it concurrently, as they do to Claude. Both users share one
behaviour, `ApiUserSimulator`: the persona prompt, bounded concurrency, the SDK's retries, the reply cache,
replies in input order, failures masked and counted, the failure threshold, and token metrics.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from sdpo_interactions.chat_clients import (
    ChatRequest,
    ClaudeMessagesClient,
    ConcurrentChatClient,
    OpenAIChatClient,
    claude_price_per_mtok,
)
from sdpo_interactions.users.base import UserSimulator, UserSimulatorError, persona_for, user_messages
from sdpo_interactions.users.registry import DEFAULT_CLAUDE_MODEL

logger = logging.getLogger(__name__)


class ApiUserSimulator(UserSimulator):
    """A user simulator whose replies come from a chat API, many requests at a time.

    Requests run concurrently through the client, so a step waits about as long as its slowest requests rather
    than their sum. A request that still fails after the SDK's retries, or comes back empty, yields "" (the
    trainer masks that sample) and counts in `failed_frac`; only when more than `max_failed_frac` of a call fails
    does it raise (`UserSimulatorError`: the trainer saves a checkpoint and stops), since then the server itself is
    down or misconfigured.
    """

    def __init__(
        self,
        style: str,
        client: ConcurrentChatClient,
        model: str,
        max_tokens: int,
        sampling: dict,
        max_failed_frac: float = 0.5,
        persona: Optional[str] = None,
    ):
        self.style, self.persona = persona_for(style, persona)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not 0.0 <= max_failed_frac <= 1.0:
            raise ValueError(f"max_failed_frac must be in [0, 1], got {max_failed_frac}")
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.sampling = sampling  # the ChatRequest sampling fields this user sends
        self.max_failed_frac = max_failed_frac
        self._reset_metrics()

    @property
    def max_concurrency(self) -> int:
        return self.client.max_concurrency

    def _reset_metrics(self) -> None:
        self._counts = {"requests": 0, "failed": 0, "cache_hits": 0, "input_tokens": 0, "output_tokens": 0}

    def request(self, prompt: str, completion: str) -> ChatRequest:
        """The request for one (request, answer) pair: the persona prompt of `user_messages`."""
        return ChatRequest.from_chat(
            self.model, user_messages(self.persona, prompt, completion), self.max_tokens, **self.sampling
        )

    def generate_feedback(self, prompts: list[str], completions: list[str]) -> list[str]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        results = self.client.create_many([self.request(p, c) for p, c in zip(prompts, completions)])
        failures = [r.error for r in results if not r.ok]
        fresh = [r for r in results if not r.cached]
        self._counts["requests"] += len(results)
        self._counts["failed"] += len(failures)
        self._counts["cache_hits"] += len(results) - len(fresh)
        self._counts["input_tokens"] += sum(r.input_tokens for r in fresh)
        self._counts["output_tokens"] += sum(r.output_tokens for r in fresh)
        if failures:
            distinct = list(dict.fromkeys(failures))
            summary = (
                f"{len(failures)}/{len(results)} {self.client.wire} user-simulator requests to "
                f"{self.client.base_url} failed; the server answered: "
                + " | ".join(distinct[:3])
                + (f" (and {len(distinct) - 3} other errors)" if len(distinct) > 3 else "")
            )
            if len(failures) > self.max_failed_frac * len(results):
                raise UserSimulatorError(f"{summary}. That is more than max_failed_frac={self.max_failed_frac}.")
            logger.warning("%s. Those samples get no feedback and are masked.", summary)
        return [r.text.strip() for r in results]

    def pop_metrics(self) -> dict[str, float]:
        """Since the last call: failed_frac, requests, failed, cache_hits, input/output tokens and cost_usd.

        Tokens and cost count only requests actually sent (cache hits are free). cost_usd is absent where no price
        is known; the key set never changes between calls, as the trainer gathers it across processes.
        """
        counts = self._counts
        metrics = {key: float(value) for key, value in counts.items()}
        metrics["failed_frac"] = counts["failed"] / counts["requests"] if counts["requests"] else 0.0
        cost = self.client.cost_usd(self.model, counts["input_tokens"], counts["output_tokens"])
        if cost is not None:
            metrics["cost_usd"] = cost
        self._reset_metrics()
        return metrics

    def settings(self) -> dict:
        """What the run settings record: no key, ever (the client alone holds it)."""
        return {
            **super().settings(),
            "api": self.client.wire,
            "base_url": self.client.base_url,
            "model": self.model,
            "max_tokens": self.max_tokens,
            **self.sampling,
            "max_concurrency": self.max_concurrency,
            "timeout": self.client.timeout,
            "max_retries": self.client.max_retries,
            "max_failed_frac": self.max_failed_frac,
            "cache_dir": None if self.client.cache is None else str(self.client.cache.directory),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(style={self.style!r}, model={self.model!r}, client={self.client!r})"


class ClaudeStyleUserSimulator(ApiUserSimulator):
    """Claude (Haiku 4.5 in the paper's HelpSteer2 runs) playing the user.

    The defaults are the authors' runs: temperature 0 and at most 256 tokens per reply. Since the API version the
    SDK sends refuses sampling parameters, a set temperature goes out under SAMPLING_API_VERSION; pass
    `temperature=None` to send none and use the current version with the model's own sampling.
    """

    def __init__(
        self,
        style: str,
        model: str = DEFAULT_CLAUDE_MODEL,
        max_tokens: int = 256,
        temperature: Optional[float] = 0.0,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 8,
        max_failed_frac: float = 0.5,
        cache_dir: Optional[str | os.PathLike] = None,
        persona: Optional[str] = None,
    ):
        if temperature is not None and not 0.0 <= temperature <= 1.0:
            raise ValueError(f"temperature must be None (the API's own sampling) or in [0, 1], got {temperature}")
        client = ClaudeMessagesClient(
            max_concurrency=max_concurrency, timeout=timeout, max_retries=max_retries, cache_dir=cache_dir
        )
        super().__init__(style, client, model, max_tokens, {"temperature": temperature}, max_failed_frac, persona)
        if claude_price_per_mtok(model) is None:
            logger.warning("No price known for %s: the cost_usd metric is left out", model)

    @property
    def temperature(self) -> Optional[float]:
        return self.sampling["temperature"]


class OpenAIStyleUserSimulator(ApiUserSimulator):
    """A user model behind any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp, TGI, a hosted API).

    The defaults are those of the authors' local user (128 tokens, temperature 0.7, top_p 0.95, top_k 20), so a
    Qwen3-8B served by vLLM replies as the one each rank loaded before. `top_k=0` sends no top_k, for servers that
    refuse the field; vLLM started by scripts/serve_user_simulator.sh then applies none. `chat_template_kwargs` go
    in each request to the server's chat template (`{"enable_thinking": False}` keeps a served Qwen3 user from
    thinking, as the local user's template is rendered; the command lines send the policy's); None sends none. The
    key is read from USER_API_KEY (else OPENAI_API_KEY) by the client and never logged or saved.
    """

    def __init__(
        self,
        style: str,
        base_url: str,
        model: str,
        max_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 20,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 8,
        max_failed_frac: float = 0.5,
        cache_dir: Optional[str | os.PathLike] = None,
        persona: Optional[str] = None,
        chat_template_kwargs: Optional[dict] = None,
    ):
        if not 0.0 <= temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 sends none), got {top_k}")
        client = OpenAIChatClient(
            base_url, max_concurrency=max_concurrency, timeout=timeout, max_retries=max_retries, cache_dir=cache_dir
        )
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k or None}
        if chat_template_kwargs is not None:
            sampling["chat_template_kwargs"] = chat_template_kwargs
        super().__init__(style, client, model, max_tokens, sampling, max_failed_frac, persona)
