"""The OpenAI chat-completions wire format as this server speaks it, and the request limits.

Every refusal is an `ApiError`, sent as OpenAI's error object `{"error": {"message", "type", "param", "code"}}`, so
an OpenAI SDK raises its usual exception with the message. All checks run before anything is stored or generated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ROLES = ("system", "user", "assistant")
MAX_USER_ID_CHARS = 256


class ApiError(Exception):
    """A refusal with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, code: Optional[str] = None, param: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[dict[str, Any]], None] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields this server reads; any other OpenAI parameter is accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    n: int = 1
    user: Optional[str] = None
    safety_identifier: Optional[str] = None


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int
    max_message_chars: int
    max_messages: int
    max_prompt_tokens: int
    max_completion_tokens: int


def parse_request(raw: bytes, limits: Limits) -> ChatCompletionRequest:
    """The request body, parsed and validated (400), once its size is known to be within the limit (413)."""
    if len(raw) > limits.max_request_bytes:
        raise ApiError(413, f"Request body of {len(raw)} bytes is over the limit of {limits.max_request_bytes}",
                       code="request_too_large")
    try:
        return ChatCompletionRequest.model_validate(json.loads(raw))
    except json.JSONDecodeError as err:
        raise ApiError(400, f"The request body is not valid JSON: {err}", code="invalid_json") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ApiError(400, f"Invalid request: {problems}", code="invalid_request") from None


def message_text(message: ChatMessage, index: int) -> str:
    """A message's text: a string, or OpenAI's list of text parts joined (any other part is refused)."""
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list) and all(p.get("type") == "text" and isinstance(p.get("text"), str)
                                                 for p in message.content):
        return "".join(p["text"] for p in message.content)
    raise ApiError(400, f"messages[{index}].content must be text (a string or text parts)", param=f"messages.{index}",
                   code="unsupported_content")


def checked_messages(request: ChatCompletionRequest, limits: Limits) -> list[dict[str, str]]:
    """The request's messages as role/content text, within the count and size limits."""
    if len(request.messages) > limits.max_messages:
        raise ApiError(400, f"{len(request.messages)} messages are over the limit of {limits.max_messages}",
                       param="messages", code="too_many_messages")
    messages = []
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise ApiError(400, f"messages[{i}].role {message.role!r} is not supported; use one of {', '.join(ROLES)}",
                           param=f"messages.{i}.role", code="unsupported_role")
        text = message_text(message, i)
        if len(text) > limits.max_message_chars:
            raise ApiError(413, f"messages[{i}] has {len(text)} characters, over the limit of "
                           f"{limits.max_message_chars}", param=f"messages.{i}.content", code="message_too_long")
        messages.append({"role": message.role, "content": text})
    if messages[-1]["role"] != "user":
        raise ApiError(400, "The last message must be the user's", param="messages", code="last_message_not_user")
    return messages


def checked_options(request: ChatCompletionRequest, limits: Limits) -> tuple[str, int]:
    """The end user's id and the answer's token budget."""
    if request.n != 1:
        raise ApiError(400, "Only n=1 is supported: every answer is a sample of its own", param="n")
    budget = request.max_completion_tokens or request.max_tokens or limits.max_completion_tokens
    if budget > limits.max_completion_tokens:
        raise ApiError(400, f"max_tokens={budget} is over the limit of {limits.max_completion_tokens}",
                       param="max_tokens", code="max_tokens_too_large")
    user = request.user if request.user is not None else (request.safety_identifier or "default")
    if not user.strip() or len(user) > MAX_USER_ID_CHARS or not user.isprintable():
        raise ApiError(400, f"user must be 1 to {MAX_USER_ID_CHARS} printable characters", param="user",
                       code="invalid_user")
    return user, budget


def check_prompt_tokens(count: int, limits: Limits) -> None:
    if count > limits.max_prompt_tokens:
        raise ApiError(400, f"The conversation is {count} tokens long, over the limit of {limits.max_prompt_tokens}",
                       param="messages", code="context_length_exceeded")


@dataclass(frozen=True)
class Served:
    """Who wrote an answer, sent with it: the `sdpo` field of a response and its `system_fingerprint`."""

    generation_id: str
    conversation_id: str
    adapter: str
    adapter_version: int

    def fields(self) -> dict:
        return {"system_fingerprint": f"{self.adapter}-v{self.adapter_version}",
                "sdpo": {"generation_id": self.generation_id, "conversation_id": self.conversation_id,
                         "adapter": self.adapter, "adapter_version": self.adapter_version}}


def completion_body(model: str, text: str, finish_reason: str, usage: dict, served: Served) -> dict:
    return {"id": f"chatcmpl-{served.generation_id}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage, **served.fields()}


def chunk_body(chunk_id: str, model: str, delta: dict, finish_reason: Optional[str] = None,
               served: Optional[Served] = None, usage: Optional[dict] = None) -> dict:
    body = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [] if usage is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = usage
    return {**body, **(served.fields() if served else {})}


def sse(body: Union[dict, str]) -> bytes:
    """One server-sent event as OpenAI streams them."""
    return f"data: {body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)}\n\n".encode("utf-8")


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
