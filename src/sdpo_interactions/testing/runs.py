"""Deterministic pieces for tests and benchmarks that launch real training processes: the prompts, a user whose
reply names its request (so a misplaced reply is visible), fake secrets to look for in every file, and process helpers
that never let a hung run hang the caller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Optional

REQUESTS = [
    "My landlord wants to raise the rent by 30 percent next month. Is that even legal?",
    "I ran my first marathon yesterday and my legs feel like wood. How do I recover?",
    "My cat knocks every glass off the table at 3am. How can I make her stop?",
    "Our team lead takes credit for my work in every meeting. Should I talk to HR?",
    "My sourdough starter smells like nail polish remover. Did I kill it?",
    "I keep forgetting my friends' birthdays. Any simple trick that works?",
]
SILENT_WORD = "sourdough"  # the user says nothing to this request: its sample must carry has_feedback=False
SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-MARKER-7d1f0c2b9e",
    "WANDB_API_KEY": "wandb-MARKER-4c8e1a6f3d",
    "HF_TOKEN": "hf_MARKERq9w8e7r6t5y4",
}


def naming_feedback(request: str) -> str:
    """The deterministic user's reply: it names the request it answers, so a misplaced reply is visible."""
    return "" if SILENT_WORD in request else f"About <<{request[:40]}>>: shorter, please."


def write_prompts(path: Path, requests=REQUESTS) -> Path:
    path.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in requests), encoding="utf-8")
    return path


def subprocess_env() -> dict[str, str]:
    """One thread per process (two processes share two cores), offline, and the secrets a real run would hold."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", **SECRETS)
    env.pop("ANTHROPIC_BASE_URL", None)
    return env


def start(command: list[str], log_path: Path, env: Optional[dict] = None, cwd: Optional[Path] = None
          ) -> subprocess.Popen:
    """Run a command (in `cwd`) in its own session (so a hung one dies whole), output to log_path."""
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=cwd, env=env or subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(process: subprocess.Popen, log_path: Path, timeout: float = 600) -> int:
    """Wait for a launched run; a hung one is killed so the test fails instead of the suite hanging."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: torchrun's workers go too
        process.wait()
        raise AssertionError(f"run timed out; log:\n{log_path.read_text()[-4000:]}") from None


def drop_weights(folder: Path) -> None:
    """Delete the weights, optimizer states and checkpoints the runs wrote (gigabytes each); keep logs and records."""
    for path in Path(folder).rglob("*"):
        if path.is_file() and path.suffix in {".safetensors", ".pt", ".pth", ".bin"}:
            path.unlink()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
