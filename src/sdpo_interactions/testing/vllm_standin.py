"""A stand-in for `vllm serve --enable-lora` on 127.0.0.1, for tests of the live server's vLLM backend where vLLM
cannot be installed: the endpoints and fields that backend uses, answered by transformers and PEFT.

- `POST /v1/completions`: `prompt` as token ids, `model` a loaded LoRA name, `logprobs`, `stream`,
  `return_tokens_as_token_ids` (tokens as `token_id:N`), `temperature`, `top_p`, `max_tokens`; the log-prob of each
  sampled token at the request's temperature, as vLLM's `--logprobs-mode processed_logprobs` gives it.
- `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` (`lora_name`, `lora_path`), as with
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
- `GET /standin/calls`: what was loaded, unloaded and generated with, in order, for the test to check.

What it cannot show is that vLLM itself behaves so; docs/live.md says what was checked where.
"""

from __future__ import annotations

import json
import threading
import time

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from peft import LoraConfig, PeftConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpo_interactions.live.adapters import load_weights
from sdpo_interactions.live.logps import answer_logps
from sdpo_interactions.sampling import Sampling, generate_exactly


class StandIn:
    """The model (one LoRA slot per loaded name), the lock its one request at a time holds, and the call record."""

    def __init__(self, model_dir: str):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model = get_peft_model(base, LoraConfig(r=1, target_modules=["q_proj"]), adapter_name="unused").eval()
        self.loaded: set[str] = set()
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def load(self, name: str, folder: str) -> None:
        with self.lock:
            load_weights(self.model, name, folder, PeftConfig.from_pretrained(folder))
            self.loaded.add(name)
            self.calls.append(["load", name])

    def unload(self, name: str) -> None:
        with self.lock:
            self.model.delete_adapter(name)
            self.loaded.discard(name)
            self.calls.append(["unload", name])

    def sample(self, name: str, prompt: list[int], body: dict) -> tuple[list[int], list[float], str]:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        config = Sampling(temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0)).generation_config(
            body.get("max_tokens", 16), pad, eos)
        with self.lock:
            self.calls.append(["generate", name])
            self.model.set_adapter(name)
            ids = torch.tensor([prompt])
            out = generate_exactly(self.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, config)
            tokens = out[0, len(prompt):].tolist()
            tokens = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
            logps = answer_logps(self.model, [prompt], [tokens], body.get("temperature", 1.0), pad_id=pad,
                                 device=torch.device("cpu"))[0]
        return tokens, logps, self.tokenizer.decode(tokens, skip_special_tokens=True)

    def pieces(self, tokens: list[int]) -> list[str]:
        """Each token's share of the decoded text, as vLLM streams it."""
        texts = [self.tokenizer.decode(tokens[:i], skip_special_tokens=True) for i in range(len(tokens) + 1)]
        return [texts[i + 1][len(texts[i]):] for i in range(len(tokens))]


def _chunk(name: str, text: str, tokens: list[str], logps: list[float], finish) -> dict:
    return {"id": "cmpl-standin", "object": "text_completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "text": text, "finish_reason": finish,
                         "logprobs": {"tokens": tokens, "token_logprobs": logps, "top_logprobs": None,
                                      "text_offset": [0] * len(tokens)}}]}


def create_app(model_dir: str) -> FastAPI:
    standin = StandIn(model_dir)
    app = FastAPI()

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request):
        body = await request.json()
        standin.load(body["lora_name"], body["lora_path"])
        return "Success"

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request):
        standin.unload((await request.json())["lora_name"])
        return "Success"

    @app.get("/standin/calls")
    async def calls():
        return standin.calls

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        name = body["model"]
        if name not in standin.loaded:
            return JSONResponse({"error": {"message": f"The model `{name}` does not exist.", "code": 404}}, 404)
        tokens, logps, text = standin.sample(name, body["prompt"], body)
        finish = "stop" if tokens and tokens[-1] == standin.tokenizer.eos_token_id else "length"
        ids = [f"token_id:{t}" for t in tokens]
        if not body.get("stream"):
            return _chunk(name, text, ids, logps, finish)
        pieces = standin.pieces(tokens)

        def events():
            for i, piece in enumerate(pieces):
                done = finish if i == len(pieces) - 1 else None
                yield f"data: {json.dumps(_chunk(name, piece, ids[i:i + 1], logps[i:i + 1], done))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
