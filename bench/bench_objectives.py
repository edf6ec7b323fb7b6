"""Step time and memory of every objective (distillation_mode) with every teacher (teacher_model_kind), relative to
the paper's sampled_token + live, in one run on the embedded model.

    python bench/bench_objectives.py [--model models/smollm2-135m-instruct] [--steps 3] [--batch 2]
        [--completion_tokens 256] [--topk 50] [--chunk_size 256] [--bf16]

Each setting trains offline on the same logged answers (no generation, no user: the step is the scoring passes and
the loss) in a fresh process, so that memory is measured alone:
- s/step: the fastest of `--steps` optimizer steps after one warm-up step (the least disturbed by whatever else the
  machine runs), with `--threads` torch threads;
- step peak: the highest resident memory during a step above the memory at its start (Linux VmHWM, reset before each
  step): what the passes and the loss allocate on top of the model and optimizer;
- largest tensor: the largest single tensor any operation of one step creates (a logits tensor, typically);
- held: resident memory after the trainer is built, above the process before it (the model and a teacher's copy).
The CPU allocator returns large blocks to the system when they are freed, so the peak follows the live tensors. On a
GPU the same columns come from torch.cuda's allocator statistics (peak allocated above the step's start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("sampled_token", "topk_logits", "full_logits")
TEACHERS = ("live", "base", "ema")


def resident_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def logged_rows(tokenizer, samples: int, completion_tokens: int) -> list[dict]:
    """Logged (prompt, answer, reply) rows whose answers are `completion_tokens` tokens long."""
    words = "the answer goes on about cats and their habits in great detail".split()
    rows = []
    for i in range(samples):
        text = " ".join(words[(i + j) % len(words)] for j in range(completion_tokens * 2))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: completion_tokens - 1]
        rows.append({"prompt": [{"role": "user", "content": f"Tell me about cats, request {i}."}],
                     "completion": tokenizer.decode(ids), "feedback": "Far too long, two lines would do."})
    return rows


def child(args) -> dict:
    import torch
    from datasets import Dataset
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoTokenizer, TrainerCallback

    from sdpo_interactions.core.offline import OfflineSDPOConfig, OfflineSDPOTrainer

    class LargestTensor(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor):
                    self.largest = max(self.largest, tensor.numel() * tensor.element_size())
            return out

    class Measure(TrainerCallback):
        def __init__(self, last_step: int):
            self.last_step, self.seconds, self.peaks, self.start, self.mode = last_step, [], [], None, None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == self.last_step:
                self.mode = LargestTensor()
                self.mode.__enter__()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                reset_peak()
            self.start = (time.perf_counter(), used_kb())

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - self.start[0]
            peak = (torch.cuda.max_memory_allocated() // 1024 if cuda else resident_kb("VmHWM")) - self.start[1]
            if self.mode is not None:
                self.mode.__exit__(None, None, None)
            elif state.global_step > 1:  # the first step warms up
                self.seconds.append(seconds)
                self.peaks.append(peak)

    cuda = torch.cuda.is_available()

    def used_kb() -> int:
        return torch.cuda.memory_allocated() // 1024 if cuda else resident_kb()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    steps = args.steps + 2  # a warm-up step, the timed steps, one step watched for its largest tensor
    data = Dataset.from_list(logged_rows(tokenizer, steps * args.batch, args.completion_tokens))
    before = used_kb()
    with tempfile.TemporaryDirectory() as tmp:
        config = OfflineSDPOConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=steps, learning_rate=1e-6,
            logging_steps=1, save_strategy="no", token_log_samples=0, report_to=[], seed=0, bf16=args.bf16,
            model_init_kwargs={"dtype": "bfloat16" if args.bf16 else "float32"},
            max_completion_length=args.completion_tokens, distillation_mode=args.child[0],
            teacher_model_kind=args.child[1], distillation_topk=args.topk, distillation_chunk_size=args.chunk_size,
            specificity_samples=0, disable_tqdm=True)
        trainer = OfflineSDPOTrainer(model=args.model, args=config, train_dataset=data, processing_class=tokenizer)
        held = used_kb() - before
        measure = Measure(last_step=steps)
        trainer.add_callback(measure)
        trainer.train()
    return {"mode": args.child[0], "teacher": args.child[1], "seconds": min(measure.seconds),
            "peak_mb": max(measure.peaks) / 1024, "held_mb": held / 1024, "largest_mb": measure.mode.largest / 2**20}


def table(results: list[dict]) -> str:
    base = next(r for r in results if (r["mode"], r["teacher"]) == ("sampled_token", "live"))
    lines = ["| mode | teacher | s/step | x | step peak MB | x | largest tensor MB | held MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['teacher']} | {r['seconds']:.2f} | {r['seconds'] / base['seconds']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f} | {r['largest_mb']:.1f} | "
                     f"{r['held_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--completion_tokens", type=int, default=256)
    parser.add_argument("--topk", type=int, default=50)
    parser.add_argument("--chunk_size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights and autocast, as the recipes on a GPU")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "TEACHER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    for mode in MODES:
        for teacher in TEACHERS:
            command = [sys.executable, __file__, "--child", mode, teacher, *sys.argv[1:]]
            out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                raise SystemExit(f"{mode} + {teacher} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{mode} + {teacher}: {results[-1]['seconds']:.2f} s/step", file=sys.stderr)
    print(f"{args.batch} answers of {args.completion_tokens} tokens a step, {args.steps} timed steps, "
          f"{Path(args.model).name}, top-k {args.topk}, chunk {args.chunk_size} tokens; x = relative to "
          "sampled_token + live")
    print(table(results))


if __name__ == "__main__":
    main()
