"""A real OpenAI-compatible server on 127.0.0.1 for tests and benchmarks: `transformers serve` with the embedded model.

`transformers serve` (the `transformers[serving]` extra) answers /v1/chat/completions as a stream only, ignores
stream_options, and refuses fields outside OpenAI's schema such as top_k: the OpenAI user streams anyway, and a
test sends `top_k=0` (no top_k). The model is loaded on the first request, which `TransformersServer` makes itself.

    with TransformersServer(model_dir) as server:
        OpenAIStyleUserSimulator(style, base_url=server.base_url, model=server.model, top_k=0)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TransformersServer:
    """`transformers serve --force-model <model_dir>` in its own process group, one CPU thread, until stop()."""

    def __init__(self, model_dir: str, log_path: Path, threads: int = 1, dtype: str = "float32",
                 startup_timeout: float = 180.0):
        self.model = str(model_dir)
        self.dtype = dtype
        self.log_path = Path(log_path)
        self.port = free_port()
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> "TransformersServer":
        cli = Path(sys.executable).with_name("transformers")
        command = [str(cli), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--force-model", self.model,
                   "--dtype", self.dtype, "--log_level", "warning"]
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self._wait_healthy()
        self._warm_up()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"transformers serve not healthy after {self.startup_timeout} s:\n"
                           f"{self.log_path.read_text()[-3000:]}")

    def _warm_up(self) -> None:
        """One request loads the model, so that concurrent first requests do not each load their own copy."""
        body = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": True}
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.startup_timeout) as reply:
            reply.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()

    def __enter__(self) -> "TransformersServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
