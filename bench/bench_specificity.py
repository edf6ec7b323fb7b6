"""What the live feedback-specificity metric costs: online SDPO steps with `specificity_samples` 0 and 4.

    python bench/bench_specificity.py [--model models/smollm2-135m-instruct] [--steps 4] [--batch 4]

The metric scores up to `specificity_samples` answers per process again, once per logging step, with another
sample's feedback: one extra no-grad teacher pass on those answers. Prints seconds per step with and without it.
"""

from __future__ import annotations

import argparse
import tempfile

from transformers import AutoTokenizer

from bench_offline import REPO, LengthUser, settings, timed
from sdpo_interactions.prompts import SYSTEM_PROMPTS, load_prompt_dataset
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--completion", type=int, default=32)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = load_prompt_dataset(str(REPO / "data" / "sample" / "train.jsonl"), SYSTEM_PROMPTS["tldr"])
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for samples in (0, 4):
            config = OnlineSDPOConfig(**settings(f"{tmp}/{samples}", args), specificity_samples=samples)
            trainer = OnlineSDPOTrainer(model=args.model, user_simulator=LengthUser(), args=config,
                                        train_dataset=prompts, processing_class=tokenizer)
            seconds[samples] = timed(trainer) / args.steps
    print(f"{args.steps} steps of {args.batch} answers (up to {args.completion} tokens), logging every step:")
    print(f"  specificity off:       {seconds[0]:.2f} s/step")
    print(f"  specificity_samples 4: {seconds[4]:.2f} s/step (+{100 * (seconds[4] / seconds[0] - 1):.0f}%)")


if __name__ == "__main__":
    main()
