"""The concurrent chat-API client layer: requests, results, an on-disk reply cache, and the Messages API client.

No simulator logic lives here: a client sends many requests at once, in bounded concurrency, through the SDK's
own retry policy, and returns one result per request in input order. The simulated users (claude_user.py) and the
evaluation's judge build their requests on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import anthropic

from run_files import write_atomic

logger = logging.getLogger(__name__)

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
