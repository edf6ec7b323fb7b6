"""Claude playing the simulated user (Claude Haiku 4.5 in the paper's HelpSteer2 runs)."""

from __future__ import annotations

import logging
import os
from typing import Optional

from chat_clients import (
    DEFAULT_CLAUDE_MODEL,
    ClaudeMessagesClient,
    MessagesRequest,
    claude_price_per_mtok,
    estimate_cost_usd,
)
from user_simulator import UserSimulator, persona_for, user_messages

logger = logging.getLogger(__name__)


class ClaudeStyleUserSimulator(UserSimulator):
    """Claude (Haiku 4.5 in the paper's HelpSteer2 runs) playing the user, many requests at a time.

    Requests run concurrently through ClaudeMessagesClient, so a step waits about as long as its slowest
    requests rather than their sum. A request that still fails after the SDK's retries, or comes back empty,
    yields "" (the trainer masks that sample) and counts in `failed_frac`; only when more than
    `max_failed_frac` of a call fails does it raise, since then the API itself is down or misconfigured.
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
        self.style, self.persona = persona_for(style, persona)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if temperature is not None and not 0.0 <= temperature <= 1.0:
            raise ValueError(f"temperature must be None (the API's own sampling) or in [0, 1], got {temperature}")
        if not 0.0 <= max_failed_frac <= 1.0:
            raise ValueError(f"max_failed_frac must be in [0, 1], got {max_failed_frac}")
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_failed_frac = max_failed_frac
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.client = ClaudeMessagesClient(
            max_concurrency=max_concurrency, timeout=timeout, max_retries=max_retries, cache_dir=cache_dir
        )
        if claude_price_per_mtok(model) is None:
            logger.warning("No price known for %s: the cost_usd metric is left out", model)
        self._reset_metrics()

    @property
    def max_concurrency(self) -> int:
        return self.client.max_concurrency

    def _reset_metrics(self) -> None:
        self._counts = {"requests": 0, "failed": 0, "cache_hits": 0, "input_tokens": 0, "output_tokens": 0}

    def request(self, prompt: str, completion: str) -> MessagesRequest:
        """The Messages request for one (request, answer) pair: the persona prompt of `user_messages`."""
        return MessagesRequest.from_chat(
            self.model, user_messages(self.persona, prompt, completion), self.max_tokens, self.temperature
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
            summary = f"{len(failures)}/{len(results)} Claude user-simulator requests failed; the API answered: " + (
                " | ".join(distinct[:3]) + (f" (and {len(distinct) - 3} other errors)" if len(distinct) > 3 else "")
            )
            if len(failures) > self.max_failed_frac * len(results):
                raise RuntimeError(f"{summary}. That is more than max_failed_frac={self.max_failed_frac}.")
            logger.warning("%s. Those samples get no feedback and are masked.", summary)
        return [r.text.strip() for r in results]

    def pop_metrics(self) -> dict[str, float]:
        """Since the last call: failed_frac, requests, failed, cache_hits, input/output tokens and cost_usd.

        Tokens and cost count only requests actually sent (cache hits are free). cost_usd is absent for a model
        with no known price; the key set never changes between calls, as the trainer gathers it across processes.
        """
        counts = self._counts
        metrics = {key: float(value) for key, value in counts.items()}
        metrics["failed_frac"] = counts["failed"] / counts["requests"] if counts["requests"] else 0.0
        cost = estimate_cost_usd(self.model, counts["input_tokens"], counts["output_tokens"])
        if cost is not None:
            metrics["cost_usd"] = cost
        self._reset_metrics()
        return metrics

    def settings(self) -> dict:
        return {
            **super().settings(),
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "max_concurrency": self.max_concurrency,
            "timeout": self.client.timeout,
            "max_retries": self.client.max_retries,
            "max_failed_frac": self.max_failed_frac,
            "cache_dir": self.cache_dir,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(style={self.style!r}, model={self.model!r}, client={self.client!r})"
