"""Offline SDPO samples per second on the embedded model, next to the cost of an online step on the same model.

    python bench/bench_offline.py [--model models/smollm2-135m-instruct] [--steps 4] [--batch 2]

Both runs train the same policy for the same number of steps and batch size on the CPU (or the GPU, if there is
one). Offline reads logged answers (data/sample/conversations.jsonl) and needs no generation and no user; online
generates `--completion` tokens per answer and asks a rule-based user, so the difference is what generation and
simulation cost. Prints seconds per step and samples per second for both.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from sdpo_interactions.conversations import load_conversation_dataset  # noqa: E402
from sdpo_interactions.core.offline import OfflineSDPOConfig, OfflineSDPOTrainer  # noqa: E402
from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages  # noqa: E402
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer  # noqa: E402
from sdpo_interactions.users.base import UserSimulator  # noqa: E402


class LengthUser(UserSimulator):
    def generate_feedback(self, prompts, completions):
        return ["Too long." if len(c.split()) > 15 else "Good." for c in completions]


def settings(output_dir: str, args) -> dict:
    return dict(output_dir=output_dir, per_device_train_batch_size=args.batch, max_steps=args.steps,
                max_completion_length=args.completion, learning_rate=1e-5, logging_steps=1, save_strategy="no",
                token_log_samples=0, report_to=[], seed=0)


def timed(trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--completion", type=int, default=64, help="online answer length (max_completion_length)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    samples = args.steps * args.batch
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = load_conversation_dataset(str(REPO / "data" / "sample" / "conversations.jsonl"), tokenizer)
        offline = OfflineSDPOTrainer(model=args.model, args=OfflineSDPOConfig(**settings(f"{tmp}/off", args)),
                                     train_dataset=data, processing_class=tokenizer)
        offline_seconds = timed(offline)
        logged = sum(len(tokenizer(c)["input_ids"]) for c in data["completion"]) / len(data)
        prompts = Dataset.from_list([{"prompt": prompt_messages(p[-1]["content"], SYSTEM_PROMPTS["general"])}
                                     for p in data["prompt"]])
        online = OnlineSDPOTrainer(model=args.model, user_simulator=LengthUser(),
                                   args=OnlineSDPOConfig(**settings(f"{tmp}/on", args)), train_dataset=prompts,
                                   processing_class=tokenizer)
        online_seconds = timed(online)
    print(f"{args.steps} steps of {args.batch} samples on {Path(args.model).name}:")
    print(f"  offline: {offline_seconds / args.steps:6.2f} s/step, {samples / offline_seconds:6.2f} samples/s "
          f"(logged answers of {logged:.0f} tokens on average)")
    print(f"  online:  {online_seconds / args.steps:6.2f} s/step, {samples / online_seconds:6.2f} samples/s "
          f"(answers of up to {args.completion} generated tokens, rule-based user)")
    print(f"  online / offline time per step: {online_seconds / offline_seconds:.1f}x")


if __name__ == "__main__":
    main()
