"""Does online SDPO move a metric that code can check? A learning benchmark with a rule-based user and controls.

    python bench/bench_learning.py [--model PATH] [--rule length] [--steps 10] [--lr 2e-5] [--arms sdpo,deranged,grpo]

The user's preference is a rule a program can verify (answers of at most 15 words, no bullet lists, a "TL;DR:"
opening, no emojis). Its reply is natural language written from the rule: a complaint naming what to change when the
answer breaks it, thanks when it does not. Three arms train the same model for the same steps on the same prompts:
  (a) sdpo      SDPO with the user's real reply;
  (b) deranged  SDPO with the reply to another answer of the batch (the control: the same replies, unrelated);
  (c) grpo      GRPO with the rule as a 0/1 reward (the same information as a number instead of language;
                4 answers to each prompt, since GRPO needs a group).
Before and after, each model answers the held-out prompts greedily, and the table gives the share of answers that
follow the rule and their mean length. Run it on your own model first: if (a) moves the metric and (b) does not, the
model reads its user's feedback and SDPO has something to learn from. It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from sdpo_interactions.prompts import SYSTEM_PROMPTS, load_prompt_dataset  # noqa: E402
from sdpo_interactions.sampling import Sampling, generate_exactly  # noqa: E402
from sdpo_interactions import OnlineSDPOConfig, OnlineSDPOTrainer  # noqa: E402
from sdpo_interactions.core.maths import derangement  # noqa: E402
from sdpo_interactions.users.base import UserSimulator  # noqa: E402

_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.M)
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")


@dataclass(frozen=True)
class Rule:
    """A preference code can check, and what a user holding it says about an answer."""

    follows: Callable[[str], bool]
    complaint: str
    thanks: str

    def reply(self, answer: str) -> str:
        return self.thanks if self.follows(answer) else self.complaint


RULES = {
    "length": Rule(lambda a: len(a.split()) <= 15, "Way too long. Say it in one short sentence of at most 15 words.",
                   "Thanks, short and clear, exactly what I wanted."),
    "no_lists": Rule(lambda a: not _LIST_LINE.search(a), "Please don't use bullet or numbered lists; write plain sentences.",
                     "Thanks, plain sentences are easy to read."),
    "tldr_prefix": Rule(lambda a: a.lstrip().startswith("TL;DR:"), 'Start your answer with "TL;DR:" please.',
                        "Thanks, good TL;DR."),
    "no_emojis": Rule(lambda a: not _EMOJI.search(a), "Please stop using emojis.", "Thanks, no emojis, nice and clean."),
}


class RuleUser(UserSimulator):
    """The rule's reply to each answer."""

    def __init__(self, rule: str):
        self.style, self.rule = rule, RULES[rule]

    def generate_feedback(self, prompts, completions):
        return [self.rule.reply(c) for c in completions]


class DerangedUser(RuleUser):
    """The control: each answer gets the rule's reply to another answer of the batch, never its own."""

    def generate_feedback(self, prompts, completions):
        replies = super().generate_feedback(prompts, completions)
        return [replies[j] for j in derangement(len(replies))] if len(replies) > 1 else replies


def rule_reward(rule: str):
    def reward(prompts, completions, **kwargs):
        return [float(RULES[rule].follows(c[0]["content"] if isinstance(c, list) else c)) for c in completions]

    reward.__name__ = f"follows_{rule}"
    return reward


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list, max_new_tokens: int) -> list[str]:
    model.eval()
    config = Sampling(temperature=0.0).generation_config(max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id)
    answers = []
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        output = generate_exactly(model, inputs, config)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def score(answers: list[str], rule: str) -> dict:
    return {"follows": statistics.fmean(RULES[rule].follows(a) for a in answers),
            "words": statistics.fmean(len(a.split()) for a in answers)}


def common(args, output_dir: str) -> dict:
    return dict(output_dir=output_dir, max_steps=args.steps, learning_rate=args.lr, max_completion_length=args.completion,
                per_device_train_batch_size=4, logging_steps=1, save_strategy="no", report_to=[], seed=args.seed,
                lr_scheduler_type="constant", bf16=False, gradient_checkpointing=False)


def make_trainer(arm: str, args, data, tokenizer, output_dir: str):
    if arm == "grpo":
        config = GRPOConfig(**common(args, output_dir), num_generations=4, beta=0.0)
        return GRPOTrainer(model=args.model, reward_funcs=[rule_reward(args.rule)], args=config, train_dataset=data,
                           processing_class=tokenizer)
    user = RuleUser(args.rule) if arm == "sdpo" else DerangedUser(args.rule)
    config = OnlineSDPOConfig(**common(args, output_dir), token_log_samples=0)
    return OnlineSDPOTrainer(model=args.model, user_simulator=user, args=config, train_dataset=data,
                             processing_class=tokenizer)


def run(args) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    system = SYSTEM_PROMPTS[args.system_prompt]
    data = load_prompt_dataset(args.train_jsonl, system, seed=args.seed)
    held_out = list(load_prompt_dataset(args.eval_jsonl, system, n=args.eval_n, seed=args.seed)["prompt"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            trainer = make_trainer(arm, args, data, tokenizer, f"{tmp}/{arm}")
            before = score(greedy_answers(trainer.model, tokenizer, held_out, args.completion), args.rule)
            start = time.perf_counter()
            trainer.model.train()
            trainer.train()
            seconds = time.perf_counter() - start
            after_answers = greedy_answers(trainer.model, tokenizer, held_out, args.completion)
            after = score(after_answers, args.rule)
            rows.append({"arm": arm, "before": before, "after": after, "train_seconds": round(seconds, 1),
                         "example": after_answers[0][:120]})
            del trainer
    return rows


def table(rows: list[dict], rule: str) -> str:
    lines = [f"| arm | follows `{rule}` before | after | mean words before | after | train s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['before']['follows']:.2f} | {r['after']['follows']:.2f} | "
                     f"{r['before']['words']:.1f} | {r['after']['words']:.1f} | {r['train_seconds']} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--rule", choices=list(RULES), default="length")
    parser.add_argument("--arms", default="sdpo,deranged,grpo", help="comma-separated: sdpo, deranged, grpo")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--completion", type=int, default=48, help="max_completion_length, also of held-out answers")
    parser.add_argument("--train_jsonl", default=str(REPO / "data" / "sample" / "train.jsonl"))
    parser.add_argument("--eval_jsonl", default=str(REPO / "data" / "sample" / "validation.jsonl"))
    parser.add_argument("--eval_n", type=int, default=8)
    parser.add_argument("--system_prompt", choices=list(SYSTEM_PROMPTS), default="general")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", help="also write the rows and settings as JSON here")
    args = parser.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(args.arms) - {"sdpo", "deranged", "grpo"}
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from sdpo, deranged, grpo")
    return args


def main(argv=None) -> list[dict]:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    rows = run(args)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    print(f"settings: {json.dumps(settings)}")
    print(table(rows, args.rule))
    for r in rows:
        print(f"{r['arm']}, first held-out answer after training: {r['example']!r}")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
