"""train.py's real main() with a deterministic user, and per-rank records of who simulated and trained on what.

Launched by test_distributed.py and test_resume.py (through `launch`), alone or under `torchrun --nproc_per_node 2`:

    python tests/sdpo_entry.py --train_jsonl p.jsonl --model_name_or_path models/smollm2-135m-instruct \
        --output_dir out --record_dir rec [--wait_for_signal_after_step 1 --wait_rank 1] [any train.py flag]

Everything but the user simulator is the real command line: TrlParser, checkpoint resolution, the trainer, the
graceful stop and its exit code. Each process writes to `<record_dir>/`:
- `simulator-rank<R>.jsonl`: every call of that process's simulator (the requests and completions it was given);
- `batches-rank<R>.jsonl`: every micro-batch that reached the loss on that process, read from its tensors;
- `ready-rank<R>` (its pid, when it waits for a signal) and `exit-rank<R>` (its exit code, when main() exits).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback
from trl import TrlParser

ROOT = Path(__file__).resolve().parent.parent

import sdpo_interactions.cli.train as train  # noqa: E402
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


def recording_trainer(record: RecordArguments):
    record_dir = Path(record.record_dir)

    class RecordingTrainer(OnlineSDPOTrainer):
        """Writes down, per process, what each micro-batch holds when it reaches the loss (after TRL's shuffle
        and split of the generation batch), read from the tensors themselves."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if record.wait_for_signal_after_step is not None and record.wait_rank == rank():
                self.add_callback(WaitForSignal(self, record.wait_for_signal_after_step, record_dir))

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


def main() -> None:
    parser = TrlParser((*train.ARGUMENTS, RecordArguments))
    script_args, training_args, model_args, record = parser.parse_args_and_config()
    Path(record.record_dir).mkdir(parents=True, exist_ok=True)
    train.build_user_simulator = lambda args, chat_template_kwargs: RecordingUser(Path(record.record_dir))
    train.OnlineSDPOTrainer = recording_trainer(record)
    try:
        train.main(script_args, training_args, model_args)
    except SystemExit as stop:  # write down each rank's own exit code: torchrun reports only that one failed
        (Path(record.record_dir) / f"exit-rank{rank()}").write_text(str(stop.code))
        raise


# -- used by the tests that launch this script ------------------------------------------------------------------


def common_flags(prompts: Path, output_dir: Path, record_dir: Path) -> list[str]:
    """A run small enough for two shared CPU cores: 8 new tokens, no checkpoint unless a test asks for one."""
    return [
        "--train_jsonl", str(prompts), "--system_prompt", "general", "--model_name_or_path", str(MODEL_DIR),
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


def signal_when_ready(record_dir: Path, process: subprocess.Popen, log_path: Path, wait_rank: int = 0,
                      timeout: float = 300) -> None:
    """Send SIGTERM to the process of `wait_rank` once it waits for it (see --wait_for_signal_after_step)."""
    ready = Path(record_dir) / f"ready-rank{wait_rank}"
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended before it was ready for the signal:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            finish(process, log_path, timeout=0)
        time.sleep(0.2)
    os.kill(int(ready.read_text()), signal.SIGTERM)


if __name__ == "__main__":
    main()
