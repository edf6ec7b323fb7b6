"""Simulated users: given a request and the policy's answer, write the user's next message.

The next message `o` is the hindsight context of SDPO: the policy re-scores its own answer after seeing it.
A simulator therefore has one job, to react to the answer in character, and never to answer the request
itself (that would leak a reference answer into the teacher context).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import anthropic
import torch

from personas import STYLE_PERSONAS, resolve_style
from run_files import write_atomic
from sampling import Sampling, generate_exactly

logger = logging.getLogger(__name__)


USER_SYSTEM_TEMPLATE = (
    "You are role-playing a user who has just asked an AI assistant a question and read its answer.\n"
    "Your persona: {persona}\n\n"
    "Write your next message to the assistant, in the first person, as this user would. React only to how "
    "well the answer suits your persona. Do not answer or solve the original request yourself, and do not "
    "rewrite the answer. Be brief: one to three sentences."
)

USER_TURN_TEMPLATE = (
    "My request to the assistant:\n<request>\n{prompt}\n</request>\n\n"
    "The assistant's answer:\n<answer>\n{completion}\n</answer>\n\n"
    "Write my next message to the assistant."
)


def user_system_prompt(persona: str) -> str:
    return USER_SYSTEM_TEMPLATE.format(persona=persona)


def user_messages(persona: str, prompt: str, completion: str) -> list[dict[str, str]]:
    """The conversation a simulator sees: the persona as system prompt, the exchange to react to as user turn."""
    return [
        {"role": "system", "content": user_system_prompt(persona)},
        {"role": "user", "content": USER_TURN_TEMPLATE.format(prompt=prompt, completion=completion)},
    ]


def persona_for(style: str, persona: Optional[str]) -> tuple[str, str]:
    """(style, persona text): a given text is used as it is (from a persona file); otherwise the built-in one."""
    if persona is not None:
        if not persona.strip():
            raise ValueError(f"the persona text of style {style!r} is empty")
        return style, persona
    name = resolve_style(style, STYLE_PERSONAS)
    return name, STYLE_PERSONAS[name]


class UserSimulator(abc.ABC):
    """Writes the simulated user's next message for each (request, answer) pair.

    What a simulator provides to the trainer:
    - `generate_feedback(prompts, completions)`: one reply per pair, in input order (required). An empty string
      means "no usable feedback" (an empty reply, or a request that failed for good): the trainer masks that
      sample rather than learning from invented feedback.
    - `style` and `persona`: the persona's name and text, when the simulator plays one (optional; they are
      recorded in the run settings so that an evaluation can judge with the same user).
    - `pop_metrics()` and `settings()`: metrics since the last call, and a secret-free description (optional).
    """

    style: Optional[str] = None
    persona: Optional[str] = None

    @abc.abstractmethod
    def generate_feedback(self, prompts: list[str], completions: list[str]) -> list[str]:
        """One message per pair, in input order."""

    def pop_metrics(self) -> dict[str, float]:
        """Metrics accumulated since the last call (token counts, cost, failures), then reset."""
        return {}

    def settings(self) -> dict:
        """The settings an evaluation needs to reproduce this user; never contains a secret."""
        settings = {"class": type(self).__name__, "style": self.style, "persona": self.persona}
        if self.persona is not None:
            settings["system_prompt"] = user_system_prompt(self.persona)
        return settings


class StyleUserSimulator(UserSimulator):
    """A local Hugging Face chat model playing the user (Qwen3-8B in the paper's TL;DR runs).

    Every process of a multi-GPU run holds its own copy on its own device and answers for its own samples,
    so no rank waits on another. The default sampling is what the authors' runs actually used: they asked for
    temperature 0.7, and transformers filled in Qwen3's top_p 0.95 and top_k 20; here all three are explicit.
    """

    def __init__(
        self,
        model_name_or_path: str,
        style: str,
        max_new_tokens: int = 128,
        sampling: Sampling = Sampling(temperature=0.7, top_p=0.95, top_k=20),
        batch_size: int = 8,
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype | str = "auto",
        chat_template_kwargs: Optional[dict] = None,
        persona: Optional[str] = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.style, self.persona = persona_for(style, persona)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name_or_path = model_name_or_path
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.batch_size = batch_size
        self.chat_template_kwargs = {"enable_thinking": False} if chat_template_kwargs is None else chat_template_kwargs
        if device is None:
            from accelerate import PartialState

            device = PartialState().device
        self.device = torch.device(device)

        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype).to(self.device).eval()
        self.generation_config = sampling.generation_config(
            max_new_tokens, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        )

    @torch.no_grad()
    def generate_feedback(self, prompts: list[str], completions: list[str]) -> list[str]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [
                self.tokenizer.apply_chat_template(
                    user_messages(self.persona, p, c),
                    tokenize=False,
                    add_generation_prompt=True,
                    **self.chat_template_kwargs,
                )
                for p, c in zip(prompts[start : start + self.batch_size], completions[start : start + self.batch_size])
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            output = generate_exactly(self.model, batch, self.generation_config)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies.extend(text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return replies

    def settings(self) -> dict:
        return {
            **super().settings(),
            "model_name_or_path": self.model_name_or_path,
            "max_new_tokens": self.max_new_tokens,
            "sampling": self.sampling.as_dict(),
            "chat_template_kwargs": self.chat_template_kwargs,
        }


# -- Claude: a concurrent Messages API client, and the Claude-played user --------------------------------------

DEFAULT_CLAUDE_MODEL = "claude-haiku-4-5-20251001"

# The SDK sends API version 2026-10-21, which rejects sampling parameters (temperature, top_p, top_k) with a 400,
# even at their defaults. A request that sets a temperature is therefore sent under the older version that
# still accepts it; a request without one uses the SDK's default version and the model's own sampling.
SAMPLING_API_VERSION = "2023-06-01"

# US$ per million (input, output) tokens, matched by model-id prefix (ids carry a date suffix). Standard list
# prices; batch and prompt-cache discounts are ignored, so the estimate is an upper bound for plain calls.
CLAUDE_PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-3-5-haiku": (0.8, 4.0),
}


def claude_price_per_mtok(model: str) -> Optional[tuple[float, float]]:
    """(input, output) US$ per million tokens for `model`, or None when the model is not in the table."""
    matches = [prefix for prefix in CLAUDE_PRICES_PER_MTOK if model.startswith(prefix)]
    return CLAUDE_PRICES_PER_MTOK[max(matches, key=len)] if matches else None


def estimate_cost_usd(model: str, input_tokens: int, output_tokens: int) -> Optional[float]:
    """Estimated cost of the given usage in US$, or None for a model without a known price."""
    price = claude_price_per_mtok(model)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1e6


@dataclass(frozen=True)
class MessagesRequest:
    """One Messages API call. `messages` are user/assistant turns; the system prompt goes in `system`."""

    model: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    system: str = ""
    temperature: Optional[float] = None  # None: the API's own sampling (see SAMPLING_API_VERSION)

    @classmethod
    def from_chat(
        cls, model: str, chat: list[dict[str, str]], max_tokens: int, temperature: Optional[float] = None
    ) -> "MessagesRequest":
        """Build a request from chat messages in the transformers layout, where a leading `system` turn is allowed."""
        system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
        turns = tuple({"role": m["role"], "content": m["content"]} for m in chat if m["role"] != "system")
        return cls(model=model, messages=turns, max_tokens=max_tokens, system=system, temperature=temperature)

    def cache_key(self) -> str:
        """Hash of everything that shapes the reply: model, system prompt, turns, max_tokens, temperature."""
        payload = json.dumps(
            [self.model, self.system, list(self.messages), self.max_tokens, self.temperature],
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MessagesResult:
    """The reply to one request: `text`, or `error` (what the API or the transport said) with `text == ""`.

    Token counts are the API's usage for this call; a reply served from the cache has `cached=True` and costs
    nothing now, although its stored usage is kept for reference.
    """

    text: str
    error: Optional[str] = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class ResponseCache:
    """Replies on disk, one JSON file per request hash.

    Each entry is written to a temporary file in the same folder and moved into place with os.replace, which is
    atomic: a reader (in any process) sees either no entry or a whole one, a crash mid-write leaves only a stray
    temporary file that is never read, and two writers of the same entry simply leave the last complete one.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict]:
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            # Only something outside this class can leave a broken entry; treat it as a miss and overwrite it.
            logger.warning("Ignoring unreadable cache entry %s (%s)", path, err)
            return None

    def put(self, key: str, record: dict) -> None:
        write_atomic(self._path(key), json.dumps(record, ensure_ascii=False))

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.directory)!r})"


class _RetryUnreadableReplies(anthropic.Middleware):
    """A 2xx reply whose body is not a valid Message (a garbled proxy answer, say) is retried like a 5xx.

    The SDK retries status codes, timeouts and connection errors by itself but would hand a malformed body
    straight to the caller; raising its RetryableError puts this case under the same retry policy too.
    """

    def handle(self, request, call_next):
        response = call_next(request)
        if response.http_response.is_success:
            try:
                message = response.parse()
            except (ValueError, anthropic.APIResponseValidationError) as err:  # JSONDecodeError is a ValueError
                raise anthropic.RetryableError(f"unreadable reply body ({type(err).__name__}: {err})") from err
            if not isinstance(message, anthropic.types.Message):
                raise anthropic.RetryableError(f"reply body is not a Message: {str(message)[:200]!r}")
        return response


class ClaudeMessagesClient:
    """Sends many Messages API requests concurrently and returns one result per request, in input order.

    Built on the official `anthropic` SDK's synchronous client, shared by a bounded thread pool, so it works from
    plain synchronous code whether or not an event loop is running. Retries (429 with retry-after, 529, 5xx,
    timeouts, connection errors, and unreadable bodies) follow the SDK's own policy; a request that still fails
    comes back as a result with `error` set instead of raising, so one bad request never loses the others.
    The API key comes from `api_key` or ANTHROPIC_API_KEY, and the endpoint from `base_url` or, as the SDK
    does by itself, ANTHROPIC_BASE_URL. The key is held only by the SDK client and never logged or shown.

        client = ClaudeMessagesClient(max_concurrency=16, cache_dir="runs/claude_cache")
        results = client.create_many([MessagesRequest.from_chat(model, chat, max_tokens=128), ...])
        texts = [r.text for r in results]   # r.error says why a request failed
    """

    def __init__(
        self,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 8,
        cache_dir: Optional[str | os.PathLike] = None,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        api_key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY", "")
        if not api_key.strip():
            raise ValueError(
                "ANTHROPIC_API_KEY is not set: export ANTHROPIC_API_KEY=... to use Claude (or pass "
                "--user_model_name_or_path to use a local user simulator instead)"
            )
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            middleware=[_RetryUnreadableReplies()],
        )

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_concurrency={self.max_concurrency}, timeout={self.timeout}, "
            f"max_retries={self.max_retries}, cache={self.cache!r}, base_url={self.base_url!r})"
        )

    def create_many(self, requests: Sequence[MessagesRequest]) -> list[MessagesResult]:
        """One result per request, in input order; at most `max_concurrency` requests are in flight at once."""
        requests = list(requests)
        if not requests:
            return []
        workers = min(self.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="claude") as pool:
            return list(pool.map(self.create, requests))

    def create(self, request: MessagesRequest) -> MessagesResult:
        """One request, through the cache when there is one. Never raises for an API or transport failure."""
        key = request.cache_key() if self.cache is not None else None
        if key is not None:
            record = self.cache.get(key)
            if record is not None:
                return MessagesResult(
                    text=record["text"],
                    input_tokens=record.get("input_tokens", 0),
                    output_tokens=record.get("output_tokens", 0),
                    cached=True,
                )
        result = self._call(request)
        if key is not None and result.ok:
            try:
                self.cache.put(
                    key,
                    {
                        "model": request.model,
                        "text": result.text,
                        "input_tokens": result.input_tokens,
                        "output_tokens": result.output_tokens,
                    },
                )
            except OSError as err:  # a full disk must not cost the reply we already paid for
                logger.warning("Could not write Claude cache entry in %s: %s", self.cache.directory, err)
        return result

    def _call(self, request: MessagesRequest) -> MessagesResult:
        kwargs: dict = {"system": request.system} if request.system else {}
        if request.temperature is not None:
            kwargs["extra_body"] = {"temperature": request.temperature}
            kwargs["extra_headers"] = {"anthropic-version": SAMPLING_API_VERSION}
        try:
            message = self._client.messages.create(
                model=request.model,
                messages=list(request.messages),
                max_tokens=request.max_tokens,
                **kwargs,
            )
        except anthropic.AnthropicError as err:  # status errors, timeouts, connection errors, unreadable bodies
            return MessagesResult(text="", error=f"{type(err).__name__}: {err}")
        usage = message.usage
        tokens = {"input_tokens": usage.input_tokens or 0, "output_tokens": usage.output_tokens or 0}
        text = "".join(block.text for block in message.content if block.type == "text")
        if not text.strip():
            return MessagesResult(text="", error=f"empty reply (stop_reason={message.stop_reason})", **tokens)
        return MessagesResult(text=text, **tokens)


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
