"""train.py's real main() with a deterministic user, and per-rank records of who simulated and trained on what.

Launched by test_distributed.py and test_resume.py (through `launch`), alone or under `torchrun --nproc_per_node 2`:

    python tests/sdpo_entry.py --train_jsonl p.jsonl --model_name_or_path models/smollm2-135m-instruct \
        --output_dir out --record_dir rec [--wait_for_signal_after_step 1 --wait_rank 1] [any train.py flag]

Everything but the user simulator is the real command line: TrlParser, checkpoint resolution, the trainer, the
graceful stop and its exit code (`--keep_user` keeps the command line's user too, e.g. a loopback Claude server).
Faults can be injected: `--block_after_step` holds the main thread in C code, as a collective waiting for a hung
rank does; `--kill_deleting_checkpoint N` kills the process with SIGKILL while the rotation deletes checkpoint-N,
after the files a resume needs are gone (what an interrupted deletion leaves); `--kill_saving_step N` kills one rank
in the middle of a save. Each process writes to
`<record_dir>/`:
- `simulator-rank<R>.jsonl`: every call of that process's simulator (the requests and completions it was given);
- `batches-rank<R>.jsonl`: every micro-batch that reached the loss on that process, read from its tensors;
- `ready-rank<R>` (its pid, when it waits for a signal) and `exit-rank<R>` (its exit code, when main() exits).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parent.parent

import sdpo_interactions.cli.train as train  # noqa: E402
from sdpo_interactions.cli.common import input_errors_as_one_line, run_cli  # noqa: E402
from sdpo_interactions.core.trainer import OnlineSDPOTrainer  # noqa: E402
from sdpo_interactions.users.base import UserSimulator  # noqa: E402
from sdpo_interactions.testing.runs import finish, naming_feedback, start  # noqa: E402

MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
@dataclass
class RecordArguments:
    record_dir: str = field(metadata={"help": "Folder for the per-rank JSONL records."})
    wait_for_signal_after_step: Optional[int] = field(
        default=None,
        metadata={"help": "After this step, the process of rank `wait_rank` writes its pid to "
                          "<record_dir>/ready-rank<R> and waits for SIGTERM/SIGINT, so a test can signal it at a "
                          "known step."},
    )
    wait_rank: int = field(default=0, metadata={"help": "The rank that waits for the signal."})
    block_after_step: Optional[int] = field(
        default=None,
        metadata={"help": "After this step, the process of rank `wait_rank` writes its pid to "
                          "<record_dir>/ready-rank<R> and blocks its main thread in C code for good (a mutex locked "
                          "twice), where Python's signal handlers never run: only the process's own signal "
                          "handling can end it."},
    )
    kill_deleting_checkpoint: Optional[int] = field(
        default=None,
        metadata={"help": "When a rotation deletes checkpoint-N, remove its optimizer, scheduler and RNG files (as a "
                          "deletion cut short leaves it), then kill the process with SIGKILL."},
    )
    kill_saving_step: Optional[int] = field(
        default=None,
        metadata={"help": "In the save of this step, the process of rank `wait_rank` kills itself with SIGKILL just "
                          "before it writes its RNG state (after the save's first collective): a rank lost in the "
                          "middle of a save."},
    )
    keep_user: bool = field(default=False, metadata={"help": "Train with the command line's user, not a recording "
                                                             "one (no simulator records then)."})


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class RecordingUser(UserSimulator):
    """NamingUser of test_trainer.py that also writes down every call it answers."""

    style = "concise_casual_beginner"

    def __init__(self, record_dir: Path):
        self.path = record_dir / f"simulator-rank{rank()}.jsonl"
        self.calls = 0

    def generate_feedback(self, prompts, completions):
        append_record(self.path, {"rank": rank(), "call": self.calls, "requests": prompts, "completions": completions})
        self.calls += 1
        return [naming_feedback(p) for p in prompts]


class WaitForSignal(TrainerCallback):
    """Hold the run after a given step until the test's signal has arrived."""

    def __init__(self, trainer: OnlineSDPOTrainer, step: int, record_dir: Path):
        self.trainer, self.step, self.ready = trainer, step, record_dir / f"ready-rank{rank()}"

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.step:
            return
        written = self.ready.with_suffix(".tmp")
        written.write_text(str(os.getpid()))
        os.replace(written, self.ready)  # the test reads a whole pid or nothing
        deadline = time.monotonic() + 120
        while self.trainer.graceful_stop.requested is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no signal arrived")
            time.sleep(0.05)


class BlockInC(TrainerCallback):
    """Hold the main thread after a given step in C code that never returns to the interpreter."""

    def __init__(self, step: int, record_dir: Path):
        self.step, self.ready = step, record_dir / f"ready-rank{rank()}"

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.step:
            return
        written = self.ready.with_suffix(".tmp")
        written.write_text(str(os.getpid()))
        os.replace(written, self.ready)
        libc = ctypes.CDLL(None)
        mutex = ctypes.create_string_buffer(64)  # zeroed: a default pthread mutex
        libc.pthread_mutex_lock(mutex)
        libc.pthread_mutex_lock(mutex)  # never returns; a signal does not interrupt it


def kill_while_deleting(step: int) -> None:
    """Make every `shutil.rmtree` of checkpoint-`step` (transformers' rotation or ours) end as a kill -9 halfway."""
    rmtree = shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        if Path(path).name == f"checkpoint-{step}":
            for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
                (Path(path) / name).unlink(missing_ok=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return rmtree(path, *args, **kwargs)

    shutil.rmtree = interrupted_rmtree


def recording_trainer(record: RecordArguments):
    record_dir = Path(record.record_dir)

    class RecordingTrainer(OnlineSDPOTrainer):
        """Writes down, per process, what each micro-batch holds when it reaches the loss (after TRL's shuffle
        and split of the generation batch), read from the tensors themselves."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if record.wait_for_signal_after_step is not None and record.wait_rank == rank():
                self.add_callback(WaitForSignal(self, record.wait_for_signal_after_step, record_dir))
            if record.block_after_step is not None and record.wait_rank == rank():
                self.add_callback(BlockInC(record.block_after_step, record_dir))

        def _save_rng_state(self, output_dir):
            if record.kill_saving_step == self.state.global_step and record.wait_rank == rank():
                os.kill(os.getpid(), signal.SIGKILL)
            return super()._save_rng_state(output_dir)

        def _compute_loss(self, model, inputs):
            mask = inputs["completion_mask"].bool()
            append_record(
                record_dir / f"batches-rank{rank()}.jsonl",
                {
                    "rank": rank(),
                    "global_step": self.state.global_step,
                    "generation_step": inputs["generation_step"].tolist(),
                    "request_text": inputs["request_text"],
                    "feedback_text": inputs["feedback_text"],
                    "completion_text": inputs["completion_text"],
                    "teacher_context": inputs["teacher_context"],
                    "has_feedback": inputs["has_feedback"].tolist(),
                    "completion_ids": [ids[m].tolist() for ids, m in zip(inputs["completion_ids"], mask)],
                    "decoded_completion": self.tokenizer.batch_decode(
                        [ids[m].tolist() for ids, m in zip(inputs["completion_ids"], mask)], skip_special_tokens=True
                    ),
                    "teacher_logps": [
                        lp[m].tolist() for lp, m in zip(inputs["teacher_logps"].float(), mask)
                    ],
                },
            )
            return super()._compute_loss(model, inputs)

    return RecordingTrainer


def entry(script_args, training_args, model_args, record: RecordArguments) -> None:
    Path(record.record_dir).mkdir(parents=True, exist_ok=True)
    if not record.keep_user:
        train.build_user_simulator = lambda args, chat_template_kwargs: RecordingUser(Path(record.record_dir))
    if record.kill_deleting_checkpoint is not None:
        kill_while_deleting(record.kill_deleting_checkpoint)
    train.OnlineSDPOTrainer = recording_trainer(record)
    try:
        with input_errors_as_one_line():
            train.main(script_args, training_args, model_args)
    except SystemExit as stop:  # write down each rank's own exit code: torchrun reports only that one failed
        (Path(record.record_dir) / f"exit-rank{rank()}").write_text(str(stop.code))
        raise


def main() -> None:
    """train.py's command line (run_cli: logging, one-line errors) with the record arguments added."""
    run_cli(entry, *train.ARGUMENTS, RecordArguments)


# -- used by the tests that launch this script ------------------------------------------------------------------


def common_flags(prompts: Path, output_dir: Path, record_dir: Path, model_dir: Path = MODEL_DIR) -> list[str]:
    """A run small enough for two shared CPU cores: 8 new tokens, no checkpoint unless a test asks for one."""
    return [
        "--train_jsonl", str(prompts), "--system_prompt", "general", "--model_name_or_path", str(model_dir),
        "--output_dir", str(output_dir), "--record_dir", str(record_dir), "--max_completion_length", "8",
        "--logging_steps", "1", "--token_log_samples", "64", "--report_to", "none", "--bf16", "false",
        "--gradient_checkpointing", "false", "--use_cpu", "true", "--seed", "3", "--learning_rate", "1e-4",
        "--dataloader_num_workers", "0",
    ]


def launch(flags: list[str], log_path: Path, nproc: int = 1) -> subprocess.Popen:
    """Start this script, under torchrun for nproc > 1."""
    script = str(Path(__file__).resolve())
    if nproc == 1:
        return start([sys.executable, script, *flags], log_path, cwd=ROOT)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return start([torchrun, "--standalone", f"--nproc_per_node={nproc}", script, *flags], log_path, cwd=ROOT)


def wait_until_ready(record_dir: Path, process: subprocess.Popen, log_path: Path, wait_rank: int = 0,
                     timeout: float = 300) -> int:
    """The pid of the process of `wait_rank` once it waits (see --wait_for_signal_after_step, --block_after_step)."""
    ready = Path(record_dir) / f"ready-rank{wait_rank}"
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended before it was ready for the signal:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            finish(process, log_path, timeout=0)
        time.sleep(0.2)
    return int(ready.read_text())


def signal_when_ready(record_dir: Path, process: subprocess.Popen, log_path: Path, wait_rank: int = 0,
                      timeout: float = 300, signum: int = signal.SIGTERM) -> int:
    """Send `signum` to the process of `wait_rank` once it waits for it; returns its pid."""
    pid = wait_until_ready(record_dir, process, log_path, wait_rank, timeout)
    os.kill(pid, signum)
    return pid


def save_tiny_model(folder: Path) -> Path:
    """A random two-layer Llama (width 32, tied embeddings: about 6 MB of weights) on the embedded model's tokenizer,
    chat template and generation config, for fault plumbing, where what the model says does not matter and a step
    takes milliseconds. (tests/conftest.py is getting a shared tiny model; this one is kept small enough for the
    checkpoints to fill a small tmpfs on purpose.)"""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(MODEL_DIR)
    config.update(dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, tie_word_embeddings=True))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MODEL_DIR).save_pretrained(folder)
    shutil.copy(MODEL_DIR / "generation_config.json", folder / "generation_config.json")
    return folder


if __name__ == "__main__":
    main()
