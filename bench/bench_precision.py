"""Precision setups side by side: step time, peak memory and the share of each update that reaches the weights.

    python bench/bench_precision.py [--setups today,default,...] [--lrs 2e-6,5e-6] [--steps 5] [--train_layers 2]

Each setup trains the embedded model (or --model) with a plain transformers Trainer on a language-modelling loss over
data/sample/conversations.jsonl, in a process of its own so that its peak memory (the process's maximum resident
set) is its own. Only the last --train_layers decoder layers train (0: the whole model), which keeps a CPU run to
minutes; their weights are the same kind of matrices and norms as the rest. The applied ratio is
precision.UpdatePrecisionCallback's <applied, computed> / <computed, computed> on a sample of 2^20 weight elements
(every trainable one, for the default 2 layers); the fp32-master setups should give 1, plain bf16 AdamW about 0.01.
Times and memory are printed relative to today's recipe (bf16 weights, adamw_bnb_8bit). On a GPU (--device cuda)
the peak memory is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]

# name -> (weights dtype, TrainingArguments fields). `bf16: true` turns on bf16 autocast (on the CPU too, with use_cpu).
SETUPS = {
    "today": ("bfloat16", {"optim": "adamw_bnb_8bit"}),
    "bf16_adamw": ("bfloat16", {"optim": "adamw_torch"}),
    "fp32_master_bnb8": ("float32", {"optim": "adamw_bnb_8bit"}),
    "bf16_kahan": ("bfloat16", {"optim": "stable_adamw"}),
    "default": ("bfloat16", {"optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=true"}),
    "fp32_master_torchao8": ("float32", {"optim": "adamw_torch_8bit"}),
    "lora": ("bfloat16", {"optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=true"}),
}
# Setups that train a LoRA adapter (r 8 on q_proj and v_proj of the trained layers) over the frozen weights: PEFT
# keeps the adapter in fp32 over a bf16 model, the recipes' optimizer steps it.
LORA_SETUPS = {"lora"}
LABELS = {
    "today": "bf16 weights, adamw_bnb_8bit (today's recipes)",
    "bf16_adamw": "bf16 weights, torch AdamW",
    "fp32_master_bnb8": "fp32 master weights + bf16 autocast, adamw_bnb_8bit",
    "bf16_kahan": "bf16 weights, stable_adamw (Kahan summation)",
    "default": "bf16 weights, torchao AdamW8bit + stochastic rounding (new recipes)",
    "fp32_master_torchao8": "fp32 master weights + bf16 autocast, torchao AdamW8bit (FSDP's upcast)",
    "lora": "bf16 weights, fp32 LoRA adapter, the recipes' optimizer (use_peft)",
}


def lm_dataset(tokenizer, length: int):
    """Language-modelling rows of `length` tokens from the sample conversations."""
    from datasets import Dataset

    rows = []
    for line in (REPO / "data" / "sample" / "conversations.jsonl").read_text().splitlines():
        ids = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True)[:length]
        rows.append({"input_ids": ids, "labels": ids})
    return Dataset.from_list(rows)


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step (forward, backward and update), from the Trainer's step events; on a GPU the
    queued kernels are waited for at both ends, so a step's time is its own."""

    def __init__(self):
        self.seconds: list[float] = []
        self.start = 0.0

    @staticmethod
    def _synchronize() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._synchronize()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._synchronize()
        self.seconds.append(time.perf_counter() - self.start)


def train(setup: str, lr: float, *, model_path: str, steps: int, tokens: int, train_layers: int, device: str = "cpu",
          callbacks=()) -> tuple:
    """Train `setup` for `steps` optimizer steps; returns (trainer, trainable parameters, their values before)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from sdpo_interactions.precision import install_precision

    dtype, fields = SETUPS[setup]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
    if setup in LORA_SETUPS:
        from peft import LoraConfig, get_peft_model

        layers = list(range(len(model.model.layers)))[-train_layers:] if train_layers else None
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 layers_to_transform=layers, task_type="CAUSAL_LM"))
    elif train_layers:
        model.requires_grad_(False)
        model.model.layers[-train_layers:].requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-precision-"), learning_rate=lr, max_steps=steps,
        per_device_train_batch_size=1, lr_scheduler_type="constant", logging_steps=steps, save_strategy="no",
        report_to=[], seed=0, bf16=True, use_cpu=device == "cpu", weight_decay=0.0, **fields)
    trainer = Trainer(model=model, args=training, train_dataset=lm_dataset(tokenizer, tokens),
                      callbacks=list(callbacks))
    install_precision(trainer).sample_size = 1 << 20
    trainer.train()
    return trainer, trainable, before


def run_one(args) -> dict:
    """One setup in this process; returns its figures."""
    import torch

    from sdpo_interactions.precision import METRIC_NAME, check_update_precision

    timer = StepTimer()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer, trainable, before = train(args.run, args.lr, model_path=args.model, steps=args.steps, tokens=args.tokens,
                                       train_layers=args.train_layers, device=args.device, callbacks=[timer])
    changed = sum((p.detach() != b).sum().item() for p, b in zip(trainable, before))
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    ratio = next(e[METRIC_NAME] for e in trainer.state.log_history if METRIC_NAME in e)
    warned = check_update_precision(trainer.model, trainer.args, trainer.optimizer) is not None
    return {"setup": args.run, "lr": args.lr, "applied_ratio": ratio,
            "changed": changed / sum(p.numel() for p in trainable),
            "step_s": statistics.median(timer.seconds[1:] or timer.seconds), "first_step_s": timer.seconds[0],
            "peak_mb": peak / 2**20, "warned": warned}


def table(rows: list[dict]) -> str:
    base = {r["lr"]: r for r in rows if r["setup"] == "today"}
    lines = ["| setup | lr | applied ratio | weights changed | s/step | first step s | peak MB | time vs today | "
             "memory vs today | start-up warning |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = base.get(r["lr"])
        rel = (f"{r['step_s'] / ref['step_s']:.2f}x | {r['peak_mb'] / ref['peak_mb']:.2f}x" if ref else "n/a | n/a")
        lines.append(f"| {LABELS[r['setup']]} | {r['lr']:g} | {r['applied_ratio']:.3f} | {r['changed']:.2%} | "
                     f"{r['step_s']:.2f} | {r['first_step_s']:.1f} | {r['peak_mb']:.0f} | {rel} | "
                     f"{'yes' if r['warned'] else 'no'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of: {', '.join(SETUPS)}")
    parser.add_argument("--lrs", default="2e-6,5e-6", help="learning rates, comma-separated")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per training row")
    parser.add_argument("--train_layers", type=int, default=2, help="train the last N decoder layers (0: all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--run", choices=list(SETUPS), help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args)))
        return 0
    unknown = sorted(set(args.setups.split(",")) - set(SETUPS))
    if unknown:
        parser.error(f"unknown setups {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
    rows = []
    for lr in args.lrs.split(","):
        for setup in args.setups.split(","):
            cmd = [sys.executable, __file__, "--run", setup, "--lr", lr, "--model", args.model, "--steps",
                   str(args.steps), "--tokens", str(args.tokens), "--train_layers", str(args.train_layers),
                   "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{setup} at lr {lr} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
