"""A pairwise judge on 127.0.0.1 that speaks OpenAI chat completions with log-probabilities, as AlpacaEval's
weighted annotator needs: it answers one token, the identifier of the preferred output, and reports top
log-probabilities, the way GPT-4 Turbo or a vLLM server does.

Which output wins is the test's choice: `prefer(instruction, outputs)` gets the instruction and the two outputs by
identifier ({"m": ..., "M": ...}, parsed from AlpacaEval's prompt) and returns the winning identifier. Faults are
injected by request number: `faults={1: 429, 2: 503}` fails the 1st and 2nd request (of all requests, retries
included) with that status, so the real SDK's own retries are exercised. Every request's headers are kept (names in lower case), so a
test can check which key the client sent.

    with JudgeServer(prefer=lambda instruction, outputs: "M", faults={1: 429}) as judge:
        ... OPENAI_API_BASE=judge.base_url ...
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from sdpo_interactions.testing.openai_server import free_port

INSTRUCTION = re.compile(r'"instruction": """(.*?)""",', re.S)
OUTPUT = re.compile(r'"model_identifier": "(\w+)",\s*"output": """(.*?)"""', re.S)
WINNER_LOGPROB = math.log(0.9)
LOSER_LOGPROB = math.log(0.1)


def parse_pairwise_prompt(text: str) -> tuple[str, dict]:
    """(instruction, {identifier: output}) from AlpacaEval's pairwise prompt."""
    instruction = INSTRUCTION.search(text)
    if instruction is None:
        raise ValueError("not an AlpacaEval pairwise prompt: no instruction block")
    return instruction.group(1), dict(OUTPUT.findall(text))


def completion(model: str, winner: str, loser: str) -> dict:
    """A chat completion of one token with top log-probabilities, as the OpenAI API returns it."""
    top = [{"token": winner, "bytes": list(winner.encode()), "logprob": WINNER_LOGPROB},
           {"token": loser, "bytes": list(loser.encode()), "logprob": LOSER_LOGPROB}]
    return {"id": "chatcmpl-judge", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": winner},
                         "logprobs": {"content": [{**top[0], "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}}


class JudgeServer:
    """The judge in a thread of this process until stop(); `requests` counts every request, retries included."""

    def __init__(self, prefer: Callable[[str, dict], str], faults: dict[int, int] | None = None):
        self.prefer = prefer
        self.faults = dict(faults or {})
        self.requests = 0
        self.headers: list[dict] = []
        self.verdicts: list[tuple[str, str]] = []  # (instruction, winning output text) per answered request
        self.port = free_port()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, body: dict) -> tuple[int, dict]:
        with self._lock:
            self.requests += 1
            fault = self.faults.get(self.requests)
        if fault is not None:
            return fault, {"error": {"message": f"injected fault {fault}", "type": "server_error"}}
        text = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        instruction, outputs = parse_pairwise_prompt(text)
        winner = self.prefer(instruction, outputs)
        (loser,) = set(outputs) - {winner}
        with self._lock:
            self.verdicts.append((instruction, outputs[winner]))
        return 200, completion(body.get("model", ""), winner, loser)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with server._lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, reply = server.answer(body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("retry-after-ms", "10")  # the SDK's backoff honours it: fast retries
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    def start(self) -> "JudgeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
