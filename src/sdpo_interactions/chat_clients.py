"""The concurrent chat-API client layer, and its two wire formats: Anthropic Messages and OpenAI chat completions.

`ConcurrentChatClient` is the one layer both wire formats share: a request and result type, a bounded thread pool,
one retry policy (timeout and retries handed to the SDK, which retries by itself), an on-disk reply cache, and
results in input order that never raise. A wire format only says how one request goes out and how its reply is
read (`_call`). No simulator logic lives here: the simulated users (users/api.py) and the evaluation's judges
(evaluation/judges.py) build their requests on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import anthropic
import httpx
import openai

from sdpo_interactions.run_files import InputError, write_atomic
from sdpo_interactions.users.registry import check_api_base  # SDK-free, so flags are checked without the SDKs

logger = logging.getLogger(__name__)

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
class ChatRequest:
    """One chat call, whatever the wire format. `messages` are user/assistant turns; the system prompt is apart.

    A sampling field left at None is not sent, so the server's own default applies. `chat_template_kwargs` goes to
    an OpenAI-compatible server's chat template (vLLM and SGLang read it: `{"enable_thinking": false}` keeps a
    served Qwen3 from thinking); None sends none, since hosted APIs and transformers serve refuse the field.
    `top_logprobs` asks an OpenAI-compatible server for that many most likely first tokens with their
    log-probabilities (a judge reading its labels' probabilities); Claude has no such field.
    """

    model: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    system: str = ""
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    chat_template_kwargs: Optional[dict] = None
    top_logprobs: Optional[int] = None

    @classmethod
    def from_chat(cls, model: str, chat: list[dict[str, str]], max_tokens: int, **sampling) -> "ChatRequest":
        """Build a request from chat messages in the transformers layout, where a leading `system` turn is allowed."""
        system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
        turns = tuple({"role": m["role"], "content": m["content"]} for m in chat if m["role"] != "system")
        return cls(model=model, messages=turns, max_tokens=max_tokens, system=system, **sampling)

    def cache_key(self) -> str:
        """Hash of everything that shapes the reply; the later fields count only when set (older keys stay valid)."""
        fields = [self.model, self.system, list(self.messages), self.max_tokens, self.temperature]
        fields += [{"top_p": self.top_p, "top_k": self.top_k}] if (self.top_p, self.top_k) != (None, None) else []
        fields += [{"chat_template_kwargs": self.chat_template_kwargs}] if self.chat_template_kwargs is not None else []
        fields += [{"top_logprobs": self.top_logprobs}] if self.top_logprobs is not None else []
        payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatResult:
    """The reply to one request: `text`, or `error` (what the API or the transport said) with `text == ""`.

    Token counts are the API's usage for this call (0 where a server reports none); a reply served from the cache
    has `cached=True` and costs nothing now, although its stored usage is kept for reference. `top_logprobs` holds
    the first token's most likely tokens and their log-probabilities, when the request asked and the server told.
    """

    text: str
    error: Optional[str] = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False
    top_logprobs: Optional[tuple[tuple[str, float], ...]] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def reply_result(text: str, why_it_ended: str, top_logprobs=None, **tokens: int) -> ChatResult:
    """A reply the API delivered: one with no text is a failure (never feedback), whatever the wire format."""
    if not text.strip():
        return ChatResult(text="", error=f"empty reply ({why_it_ended})", **tokens)
    return ChatResult(text=text, top_logprobs=top_logprobs, **tokens)


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




class ConcurrentChatClient(ABC):
    """Sends many requests concurrently and returns one result per request, in input order.

    A synchronous SDK client shared by a bounded thread pool, so it works from plain synchronous code whether or
    not an event loop is running. Retries of 429 (with retry-after), 5xx, timeouts, connection errors and unreadable
    bodies follow the SDK's own policy with `max_retries` and `timeout`; a request that still fails comes back as a
    result with `error` set instead of raising, so one bad request never loses the others. The key is held only
    by the SDK client and never logged or shown.

        results = client.create_many([ChatRequest.from_chat(model, chat, max_tokens=128), ...])
        texts = [r.text for r in results]   # r.error says why a request failed
    """

    wire: ClassVar[str]  # names the pool's threads and the log lines

    def __init__(
        self, max_concurrency: int, timeout: float, max_retries: int, cache_dir: Optional[str | os.PathLike]
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None

    @property
    @abstractmethod
    def base_url(self) -> str:
        """The endpoint requests go to (never the key)."""

    @abstractmethod
    def _call(self, request: ChatRequest) -> ChatResult:
        """Send one request through the SDK (which retries); an API or transport failure is a result, not a raise."""

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> Optional[float]:
        """Estimated US$ of the given usage, or None where no price is known (a self-hosted server costs none)."""
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_concurrency={self.max_concurrency}, timeout={self.timeout}, "
            f"max_retries={self.max_retries}, cache={self.cache!r}, base_url={self.base_url!r})"
        )

    def create_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in input order; at most `max_concurrency` requests are in flight at once."""
        requests = list(requests)
        if not requests:
            return []
        workers = min(self.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self.wire) as pool:
            return list(pool.map(self.create, requests))

    def create(self, request: ChatRequest) -> ChatResult:
        """One request, through the cache when there is one. Never raises for an API or transport failure."""
        key = request.cache_key() if self.cache is not None else None
        if key is not None:
            record = self.cache.get(key)
            if record is not None:
                top = record.get("top_logprobs")
                return ChatResult(
                    text=record["text"],
                    input_tokens=record.get("input_tokens", 0),
                    output_tokens=record.get("output_tokens", 0),
                    cached=True,
                    top_logprobs=None if top is None else tuple((token, logprob) for token, logprob in top),
                )
        result = self._call(request)
        if key is not None and result.ok:
            record = {"model": request.model, "text": result.text, "input_tokens": result.input_tokens,
                      "output_tokens": result.output_tokens}
            if result.top_logprobs is not None:
                record["top_logprobs"] = [list(pair) for pair in result.top_logprobs]
            try:
                self.cache.put(key, record)
            except OSError as err:  # a full disk must not cost the reply we already paid for
                logger.warning("Could not write %s cache entry in %s: %s", self.wire, self.cache.directory, err)
        return result


# -- Anthropic Messages ------------------------------------------------------------------------------------------


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


class ClaudeMessagesClient(ConcurrentChatClient):
    """The Anthropic Messages API on the shared layer, through the official `anthropic` SDK.

    The key comes from `api_key` or ANTHROPIC_API_KEY, and the endpoint from `base_url` or, as the SDK does by
    itself, ANTHROPIC_BASE_URL. Only `temperature` of a request's sampling is sent (under SAMPLING_API_VERSION).
    `instead` ends the missing-key error with the alternative its caller offers.
    """

    wire = "claude"

    def __init__(
        self,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 8,
        cache_dir: Optional[str | os.PathLike] = None,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        instead: str = "pass --user_model_name_or_path or --user_api_base to use another user simulator instead",
    ):
        super().__init__(max_concurrency, timeout, max_retries, cache_dir)
        api_key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY", "")
        if not api_key.strip():
            raise InputError(f"ANTHROPIC_API_KEY is not set: export ANTHROPIC_API_KEY=... to use Claude (or {instead})")
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

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> Optional[float]:
        return estimate_cost_usd(model, input_tokens, output_tokens)

    def _call(self, request: ChatRequest) -> ChatResult:
        if (request.top_p, request.top_k, request.chat_template_kwargs, request.top_logprobs) != (None,) * 4:
            raise ValueError("Claude is sent a temperature only; top_p, top_k, chat_template_kwargs and top_logprobs "
                             "are not supported")
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
            return ChatResult(text="", error=f"{type(err).__name__}: {err}")
        usage = message.usage
        tokens = {"input_tokens": usage.input_tokens or 0, "output_tokens": usage.output_tokens or 0}
        text = "".join(block.text for block in message.content if block.type == "text")
        return reply_result(text, f"stop_reason={message.stop_reason}", **tokens)


# -- OpenAI-compatible chat completions (vLLM, SGLang, llama.cpp, TGI, transformers serve, hosted APIs) -------------


def unreadable_body_problem(body: bytes, content_type: str) -> Optional[str]:
    """Why a 2xx chat-completions body cannot be read, or None: a JSON object, or SSE events of JSON objects."""
    try:
        text = body.decode("utf-8")
        if "text/event-stream" not in content_type:
            return None if isinstance(json.loads(text), dict) else "body is not a JSON object"
        for line in text.splitlines():
            data = line[len("data:"):].strip() if line.startswith("data:") else None
            if data and data != "[DONE]" and not isinstance(json.loads(data), dict):
                return f"stream event is not a JSON object: {data[:200]!r}"
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"unreadable reply body ({type(err).__name__}: {err})"
    return None


class _UnreadableRepliesAsServerErrors(httpx.HTTPTransport):
    """A 2xx reply whose body cannot be read becomes a 502 before the SDK sees it, so the SDK's policy retries it.

    The `openai` SDK retries status codes, timeouts and connection errors by itself but would hand a garbled body
    (a broken proxy, a server that died mid-stream) to the caller. Reading the body here costs nothing, since the
    client reads every reply whole anyway.
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not response.is_success:
            return response
        body = response.read()
        problem = unreadable_body_problem(body, response.headers.get("content-type", ""))
        headers = [(k, v) for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
        if problem is None:
            return httpx.Response(response.status_code, headers=headers, content=body, request=request)
        logger.debug("Retrying a reply with an unreadable body: %s", problem)
        error = json.dumps({"error": {"message": problem, "type": "unreadable_reply"}}).encode()
        return httpx.Response(502, headers={"content-type": "application/json"}, content=error, request=request)


def api_key_from_env(names: Sequence[str]) -> str:
    """The key of an OpenAI-compatible server: the first of the variables `names` that is set, else none (a local
    vLLM). "EMPTY" stands for no key, as vLLM's docs do, since the SDK refuses an empty one."""
    return next((os.environ[name] for name in names if os.environ.get(name)), "EMPTY")


class OpenAIChatClient(ConcurrentChatClient):
    """Any OpenAI-compatible `/v1/chat/completions` endpoint on the shared layer, through the official `openai` SDK.

    Replies are streamed and read whole: every server streams (transformers serve answers nothing else), and the
    last event carries the usage where the server reports it (`stream_options.include_usage`). A set `top_k` goes
    in the request body, where vLLM and SGLang read it; left at None it is not sent (some servers refuse it).
    The key is `api_key`, else the first of the `key_env` variables that is set (USER_API_KEY for the user,
    JUDGE_API_KEY for the judge, then OPENAI_API_KEY), else none.
    """

    wire = "openai"

    def __init__(
        self,
        base_url: str,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 8,
        cache_dir: Optional[str | os.PathLike] = None,
        api_key: Optional[str] = None,
        key_env: Sequence[str] = ("USER_API_KEY", "OPENAI_API_KEY"),
    ):
        super().__init__(max_concurrency, timeout, max_retries, cache_dir)
        check_api_base(base_url, "the API base URL")
        http_client = httpx.Client(
            transport=_UnreadableRepliesAsServerErrors(),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._client = openai.OpenAI(
            api_key=api_key if api_key is not None else api_key_from_env(key_env),
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
        )

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def _call(self, request: ChatRequest) -> ChatResult:
        system = [{"role": "system", "content": request.system}] if request.system else []
        sampling = {name: value for name, value in (("temperature", request.temperature), ("top_p", request.top_p))
                    if value is not None}
        extra_body = {name: value for name, value in (("top_k", request.top_k),
                                                      ("chat_template_kwargs", request.chat_template_kwargs))
                      if value is not None} or None
        if request.top_logprobs is not None:
            sampling.update(logprobs=True, top_logprobs=request.top_logprobs)
        try:
            stream = self._client.chat.completions.create(
                model=request.model,
                messages=[*system, *request.messages],
                max_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra_body,
                **sampling,
            )
            parts, finish_reason, usage, top = [], None, None, None
            for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    parts.append(choice.delta.content or "")
                    finish_reason = choice.finish_reason or finish_reason
                    top = top or first_token_top_logprobs(choice)
        except openai.OpenAIError as err:  # status errors, timeouts, connection errors, error events in the stream
            return ChatResult(text="", error=f"{type(err).__name__}: {err}")
        tokens = {"input_tokens": usage.prompt_tokens or 0, "output_tokens": usage.completion_tokens or 0} if usage else {}
        return reply_result("".join(parts), f"finish_reason={finish_reason}", top_logprobs=top, **tokens)


def first_token_top_logprobs(choice) -> Optional[tuple[tuple[str, float], ...]]:
    """(token, log-probability) of the most likely first tokens in a streamed choice, when it carries them."""
    content = choice.logprobs.content if choice.logprobs is not None else None
    if not content:
        return None
    return tuple((candidate.token, candidate.logprob) for candidate in content[0].top_logprobs or ())
