"""Peak memory of the teacher (hindsight) pass for a few chunk sizes.

The teacher pass scores a whole generation batch through TRL's chunked log-prob helper; the chunk is
per_device_train_batch_size. Prints, per chunk size: the largest logits tensor the model returned (measured with a
forward hook, on any device), the peak extra memory on a GPU (torch.cuda.max_memory_allocated), the time, and what
the largest logits tensor would weigh in float32 with Qwen3's 151,936-token vocabulary.

    .venv/bin/python bench/bench_teacher_memory.py --batch 8 --completion_tokens 32 --chunks 1 2 4 8
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer


from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer  # noqa: E402

QWEN3_VOCAB = 151_936
MIB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default="models/smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8, help="Samples in the generation batch.")
    parser.add_argument("--completion_tokens", type=int, default=32, help="Tokens per completion.")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8], help="Chunk sizes to try.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if any(c < 1 or c > args.batch for c in args.chunks):
        parser.error(f"--chunks must lie in 1..--batch ({args.batch}), got {args.chunks}")
    return args


def teacher_pass(trainer, teacher_texts, completion_ids, completion_mask) -> tuple[int, float, float]:
    """(largest logits tensor in bytes, peak extra GPU bytes or nan, seconds) of one training-mode teacher pass."""
    largest = []
    hook = trainer.model.register_forward_hook(
        lambda module, args, output: largest.append(output.logits.numel() * output.logits.element_size())
    )
    cuda = completion_ids.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    try:
        trainer.scorer.teacher_pass(teacher_texts, completion_ids, completion_mask)
    finally:
        hook.remove()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before if cuda else float("nan")
    return max(largest), peak, seconds


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=getattr(torch, args.dtype)).to(device)
    prompts = [[{"role": "user", "content": f"Request number {i}: summarize my week in one line."}]
               for i in range(args.batch)]
    generator = torch.Generator().manual_seed(0)
    completion_ids = torch.randint(100, tokenizer.vocab_size, (args.batch, args.completion_tokens),
                                   generator=generator).to(device)
    completion_mask = torch.ones_like(completion_ids)
    print(f"device={device} model={args.model_name_or_path} dtype={args.dtype} vocab={model.config.vocab_size} "
          f"batch={args.batch} completion_tokens={args.completion_tokens}")
    print(f"{'chunk':>5} {'largest logits MiB':>19} {'GPU peak extra MiB':>19} {'seconds':>8} "
          f"{'same, Qwen3 vocab fp32 MiB':>27}")
    with tempfile.TemporaryDirectory() as output_dir:
        for chunk in args.chunks:
            config = OnlineSDPOConfig(output_dir=output_dir, per_device_train_batch_size=chunk, report_to=[],
                                      max_completion_length=args.completion_tokens,
                                      bf16=args.dtype == "bfloat16" and device == "cuda")
            trainer = OnlineSDPOTrainer(model=model, args=config, processing_class=tokenizer,
                                        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
            teacher_texts = [trainer.contexts.teacher_context(p, "Too long, just the gist please.")[0] for p in prompts]
            trainer.model.train()
            largest, peak, seconds = teacher_pass(trainer, teacher_texts, completion_ids, completion_mask)
            qwen3 = chunk * (args.completion_tokens + 1) * QWEN3_VOCAB * 4
            print(f"{chunk:>5} {largest / MIB:>19.1f} {peak / MIB:>19.1f} {seconds:>8.2f} {qwen3 / MIB:>27.1f}")


if __name__ == "__main__":
    main()
