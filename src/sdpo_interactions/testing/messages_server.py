"""A real HTTP server on 127.0.0.1 that speaks enough of two chat APIs for their official SDKs: the Anthropic
Messages API (POST /v1/messages) and OpenAI chat completions (POST /v1/chat/completions, streamed or not).

Tests and benchmarks point the real SDK at it (ANTHROPIC_BASE_URL or base_url) and inject faults per request.
A request is identified by a tag, `ID:<tag>`, written anywhere in its text; the default reply echoes that tag,
so a caller can check that every reply went back to the request that asked for it.

    with MessagesServer(latency=0.05) as server:
        server.add_fault("3", "rate_limit", retry_after=0.01)     # first attempt of ID:3 gets a 429
        server.add_fault("5", "server_error", times=None)          # ID:5 fails for good
        ... ANTHROPIC_BASE_URL=server.url ...
        server.hits("3")   # -> 2

The reply function is pluggable (`reply=`): it receives the parsed request body and returns the reply text,
e.g. a canned verdict for a judge test. An OpenAI request that asks for log-probabilities (`logprobs`,
`top_logprobs`) gets the first token's candidates that `logprobs=` returns for its body, as (token, log-probability)
pairs, most likely first, the way vLLM reports them; without `logprobs=` the server ignores the request's field, as
servers that do not support it do.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

TAG_PATTERN = re.compile(r"ID:([A-Za-z0-9_.-]+)")

# kind -> (HTTP status, Anthropic error type) for the faults that answer with an error body.
ERROR_FAULTS = {
    "rate_limit": (429, "rate_limit_error"),
    "overloaded": (529, "overloaded_error"),
    "server_error": (500, "api_error"),
    "bad_request": (400, "invalid_request_error"),
}
FAULT_KINDS = (*ERROR_FAULTS, "slow", "malformed", "empty")
SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k")
SAMPLING_API_VERSION = "2023-06-01"  # like the real API, only this older version accepts sampling parameters


def request_text(body: dict) -> str:
    """All the text of a request: system prompt and every turn (string or text-block content)."""
    parts = [body.get("system") or ""] if isinstance(body.get("system"), str) else []
    for message in body.get("messages", []):
        content = message.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(block.get("text", "") for block in content if isinstance(block, dict))
    return "\n".join(parts)


def request_tag(body: dict) -> Optional[str]:
    """The `ID:<tag>` of a request, searched in its turns first (the system prompt is shared), else None."""
    turns = request_text({"messages": body.get("messages", [])})
    match = TAG_PATTERN.search(turns) or TAG_PATTERN.search(request_text(body))
    return match.group(1) if match else None


def echo_reply(body: dict) -> str:
    return f"reply to ID:{request_tag(body)}"


@dataclass
class Fault:
    """What the next `times` attempts of one tag get (times=None: every attempt, a permanent failure)."""

    kind: str
    times: Optional[int] = 1
    retry_after: Optional[float] = 0.01  # seconds, sent as `retry-after` on error faults; None sends none
    delay: float = 2.0  # for "slow": how long the reply is held back
    message: str = ""


@dataclass
class LoggedRequest:
    tag: Optional[str]
    body: dict
    headers: dict[str, str]
    outcome: str  # "ok" or the fault kind
    time: float = field(default_factory=time.monotonic)


class MessagesServer:
    """POST /v1/messages on an ephemeral port, one thread per connection; start()/stop() or a `with` block."""

    def __init__(self, reply: Callable[[dict], str] = echo_reply, latency: float = 0.0,
                 logprobs: Optional[Callable[[dict], list[tuple[str, float]]]] = None):
        self.reply = reply
        self.logprobs = logprobs
        self.latency = latency
        self.requests: list[LoggedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most requests being answered at once: the client's real concurrency
        self._faults: dict[Optional[str], list[Fault]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # -- control ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "MessagesServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="messages-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "MessagesServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_fault(self, tag: Optional[str], kind: str, **kwargs) -> None:
        """Queue a fault for the requests tagged `tag` (None: requests without a tag); faults apply in order."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._faults.setdefault(tag, []).append(Fault(kind, **kwargs))

    def hits(self, tag: Optional[str] = None) -> int:
        """Attempts received in all, or for one tag."""
        with self._lock:
            return len(self.requests) if tag is None else sum(r.tag == tag for r in self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.max_in_flight = 0

    def _next_fault(self, tag: Optional[str]) -> Optional[Fault]:
        with self._lock:
            queue = self._faults.get(tag)
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
            return fault

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _handler_class(self):
        return type("Handler", (_Handler,), {"owner": self})


class _Handler(BaseHTTPRequestHandler):
    """One request of the server `owner` (set on the subclass each MessagesServer makes)."""

    owner: MessagesServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_POST(self):
        with self.owner._lock:
            self.owner.in_flight += 1
            self.owner.max_in_flight = max(self.owner.max_in_flight, self.owner.in_flight)
        try:
            self._answer()
        finally:
            with self.owner._lock:
                self.owner.in_flight -= 1

    openai = False  # set per request: which API's wire format the reply takes

    def _answer(self):
        length = int(self.headers.get("content-length", 0))
        raw = self.rfile.read(length)
        route = self.path.split("?")[0]
        if route not in ("/v1/messages", "/v1/chat/completions"):
            return self._send_error(404, "not_found_error", f"no route {self.path}")
        self.openai = route == "/v1/chat/completions"
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as err:
            return self._send_error(400, "invalid_request_error", f"request body is not JSON: {err}")
        sampling = [name for name in SAMPLING_PARAMETERS if name in body]
        if sampling and not self.openai and self.headers.get("anthropic-version") != SAMPLING_API_VERSION:
            return self._send_error(
                400, "invalid_request_error", f"{sampling[0]}: Extra inputs are not permitted"
            )
        tag = request_tag(body)
        fault = self.owner._next_fault(tag)
        with self.owner._lock:
            self.owner.requests.append(
                LoggedRequest(tag, body, dict(self.headers.items()), fault.kind if fault else "ok")
            )
        if self.owner.latency:
            time.sleep(self.owner.latency)
        if fault is not None and fault.kind in ERROR_FAULTS:
            status, error_type = ERROR_FAULTS[fault.kind]
            message = fault.message or f"injected {fault.kind} for ID:{tag}"
            headers = {} if fault.retry_after is None else {"retry-after": str(fault.retry_after)}
            return self._send_error(status, error_type, message, headers)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "malformed":
            if self.openai and body.get("stream"):
                return self._send(200, b'data: {"id": "chatcmpl-broken", "choices": [\n\n', {}, "text/event-stream")
            return self._send(200, b'{"id": "msg_broken", "type": "message", "content": [', {})
        text = "" if fault is not None and fault.kind == "empty" else self.owner.reply(body)
        if self.openai:
            return self._send_chat_completion(body, text)
        message = {
            "id": f"msg_{len(self.owner.requests):06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": len(request_text(body).split()),
                "output_tokens": len(text.split()),
            },
        }
        self._send(200, json.dumps(message).encode(), {})

    def _first_token_logprobs(self, body: dict) -> Optional[dict]:
        """The `logprobs` of a choice whose first token has the test's candidates, when the request asked."""
        if self.owner.logprobs is None or not body.get("logprobs"):
            return None
        candidates = self.owner.logprobs(body)[: body.get("top_logprobs") or 1]
        top = [{"token": token, "logprob": logprob, "bytes": list(token.encode())} for token, logprob in candidates]
        return {"content": [{**top[0], "top_logprobs": top}]}

    def _send_chat_completion(self, body: dict, text: str):
        """A chat completion: SSE chunks (text word by word, then usage when asked for) or one JSON object."""
        usage = {"prompt_tokens": len(request_text(body).split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"chatcmpl-{len(self.owner.requests):06d}", "created": 0, "model": body.get("model", "?")}
        logprobs = self._first_token_logprobs(body)
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                      "logprobs": logprobs}
            reply = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return self._send(200, json.dumps(reply).encode(), {})
        chunk = {**base, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": ""}] + [{"content": w} for w in re.split(r"(?<= )", text) if w]
        events = [{**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None,
                                         "logprobs": logprobs if i == 1 else None}]} for i, d in enumerate(deltas)]
        events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage})
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send(200, payload.encode(), {}, "text/event-stream")

    def _send_error(self, status, error_type, message, headers=None):
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        if self.openai:
            body = {"error": {"type": error_type, "message": message, "code": status}}
        self._send(status, json.dumps(body).encode(), headers or {})

    def _send(self, status, payload: bytes, headers: dict, content_type: str = "application/json"):
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            self.send_header("request-id", f"req_test_{status}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its timeout); nothing to answer
