"""GPU smoke check of online SDPO: a few real steps of a randomly initialised Qwen3-architecture policy, no download.

    python bench/gpu_smoke.py --tokenizer models/smollm2-135m-instruct [--size 1.7b] [--out report.json]

What it checks, on one CUDA GPU, in bf16 with gradient checkpointing (the recipes' memory settings):
- full fine-tuning steps run, the loss is finite and the weights move;
- two scoring passes per sample (teacher at generation time, student inside the loss), counted by a hook;
- the policy samples exactly as configured although its folder's generation_config.json says 0.6/0.95/20;
- the teacher pass's peak memory over what was allocated before it, and generation + training tokens per second;
- a LoRA step: only adapter weights move;
- two offline steps on the shipped conversations;
- the precision setups of bench/bench_precision.py on the same policy (last 2 layers, 5 steps each): the share of
  each update that reaches the weights, the step time and the peak memory, relative to today's recipe; the recipes'
  setup must keep at least 95% of the update;
- bench/bench_objectives.py's table on the same policy in bf16: every distillation_mode with every
  teacher_model_kind, step time and peak memory relative to sampled_token + live;
- the online SDPO step against TRL's own GRPO step on the same work (same prompts, batch, answers forced to the same
  length, same optimizer), the median step after the first: what SDPO's teacher pass and user add.
vLLM is checked only if it imports. Each check prints PASS or FAIL; the exit status is 1 if any failed.
The policy is random, so its answers are noise: this measures the code paths and their cost, not learning.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages  # noqa: E402
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer  # noqa: E402
from sdpo_interactions.users.base import UserSimulator  # noqa: E402

import bench_precision  # noqa: E402  (beside this script: its setups and its step timer)

# Qwen3-1.7B's and Qwen3-4B's shapes (the vocabulary is the tokenizer's).
SIZES = {
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8),
}
QWEN3_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
BENCH = Path(__file__).resolve().parent
REQUESTS = [f"Post {i}: my neighbour mows his lawn at 6am every Sunday and I work nights. What can I do?"
            for i in range(64)]


class LengthUser(UserSimulator):
    """A rule-based user: too long above 15 words, otherwise content, naming the post it answers."""

    style = "concise_casual_beginner"

    def generate_feedback(self, prompts, completions):
        # Each reply names its post, so a stranger's reply differs from the sample's own and is scored again.
        return [f"{p.split(':')[0]}: " + ("way too long, two lines please." if len(c.split()) > 15 else "thanks.")
                for p, c in zip(prompts, completions)]


def build_policy(tokenizer, size: str, folder: Path) -> int:
    config = Qwen3Config(vocab_size=len(tokenizer), head_dim=128, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SIZES[size])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.update(**QWEN3_SAMPLING)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return params


def shared_settings(output_dir: str, steps: int, batch: int, completion: int) -> dict:
    """The settings SDPO's and GRPO's steps share: the recipes' memory settings on one GPU."""
    return dict(output_dir=output_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=2,
                max_steps=steps, max_completion_length=completion, learning_rate=1e-5, bf16=True,
                gradient_checkpointing=True, model_init_kwargs={"dtype": "bfloat16"}, optim="adamw_torch",
                logging_steps=1, save_strategy="no", report_to=[], seed=0)


def prompts() -> Dataset:
    return Dataset.from_list([{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS])


def make_trainer(policy: Path, output_dir: str, steps: int, batch: int, completion: int, peft_config=None, **extra):
    args = OnlineSDPOConfig(**shared_settings(output_dir, steps, batch, completion), token_log_samples=2, **extra)
    return OnlineSDPOTrainer(model=str(policy), user_simulator=LengthUser(), args=args, train_dataset=prompts(),
                             processing_class=AutoTokenizer.from_pretrained(policy), peft_config=peft_config)


def shorter_is_better(completions, **kwargs) -> list[float]:
    """GRPO's reward for the comparison: the rule LengthUser states in words, as a number."""
    return [-float(len(c[0]["content"].split())) for c in completions]


def sdpo_over_grpo(policy: Path, tmp: str, args) -> dict:
    """The median step of online SDPO and of TRL's GRPO on the same work, after a first warm-up step. Both sample
    two answers per prompt (GRPO's group needs two), of exactly `--completion` tokens each."""
    same = dict(num_generations=2, generation_kwargs={"min_new_tokens": args.completion})
    steps = args.steps + 1
    times = {}
    for name in ("sdpo", "grpo"):
        timer = bench_precision.StepTimer()
        if name == "sdpo":
            trainer = make_trainer(policy, f"{tmp}/{name}", steps, args.batch, args.completion, **same)
        else:
            config = GRPOConfig(**shared_settings(f"{tmp}/{name}", steps, args.batch, args.completion), **same)
            trainer = GRPOTrainer(model=str(policy), reward_funcs=shorter_is_better, args=config,
                                  train_dataset=prompts(), processing_class=AutoTokenizer.from_pretrained(policy))
        trainer.add_callback(timer)
        trainer.train()
        times[name] = statistics.median(timer.seconds[1:])
        del trainer
        torch.cuda.empty_cache()
    return {"sdpo_step_s": round(times["sdpo"], 2), "grpo_step_s": round(times["grpo"], 2),
            "sdpo_over_grpo": round(times["sdpo"] / times["grpo"], 2)}


def objective_table(policy: Path, args) -> tuple[str, tuple[str, bool, str]]:
    """bench/bench_objectives.py on this GPU and policy, in bf16 (each setting in a process of its own)."""
    command = [sys.executable, str(BENCH / "bench_objectives.py"), "--model", str(policy), "--bf16",
               "--batch", str(args.batch), "--completion_tokens", str(args.completion * 4), "--steps", "3"]
    out = subprocess.run(command, capture_output=True, text=True)
    print(out.stdout)
    detail = "9 settings measured" if out.returncode == 0 else out.stderr[-2000:]
    return out.stdout, ("every objective with every teacher trains (bench_objectives)", out.returncode == 0, detail)


class Probe:
    """Counts scoring passes and completion tokens, and measures the teacher pass's peak memory."""

    def __init__(self, trainer):
        self.scored = 0
        self.tokens = 0
        self.teacher_peak_gib = 0.0
        trainer.model.register_forward_pre_hook(self._count, with_kwargs=True)
        teacher, generate = trainer.scorer.teacher_pass, trainer._generate_and_score_completions

        def measured_teacher(*args, **kwargs):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = teacher(*args, **kwargs)
            torch.cuda.synchronize()
            self.teacher_peak_gib = max(self.teacher_peak_gib, (torch.cuda.max_memory_allocated() - before) / 2**30)
            return out

        def counted_generation(inputs):
            out = generate(inputs)
            self.tokens += int(out["completion_mask"].sum())
            return out

        trainer.scorer.teacher_pass = measured_teacher
        trainer._generate_and_score_completions = counted_generation

    def _count(self, module, args, kwargs):
        if kwargs.get("use_cache") is False:  # TRL's scoring passes; generation runs with the cache on
            self.scored += kwargs["input_ids"].shape[0]


def run(args) -> dict:
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    checks: list[tuple[str, bool, str]] = []
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy"
        results["parameters"] = build_policy(tokenizer, args.size, policy)

        trainer = make_trainer(policy, f"{tmp}/full", args.steps, args.batch, args.completion)
        probe = Probe(trainer)
        before = {n: p.detach().clone() for n, p in list(trainer.model.named_parameters())[:8]}
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        samples = args.steps * 2 * args.batch
        moved = any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters() if n in before)
        results.update(train_seconds=round(seconds, 1), samples=samples, completion_tokens=probe.tokens,
                       tokens_per_second=round(probe.tokens / seconds, 1), teacher_peak_gib=round(probe.teacher_peak_gib, 2),
                       peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), losses=losses,
                       sampling=trainer.policy_sampling())
        checks.append(("full fine-tuning: finite losses, weights moved", moved and all(map(_finite, losses)),
                       f"losses {losses}"))
        # Plus the specificity metric's stranger pass: one generation batch (2 micro-batches) per step.
        rescored = args.steps * min(trainer.args.specificity_samples, 2 * args.batch)
        checks.append(("two scoring passes per sample", probe.scored == 2 * samples + rescored,
                       f"{probe.scored} scored rows for {samples} samples and {rescored} re-scored"))
        sampling = trainer.policy_sampling()
        exact = (sampling["temperature"], sampling["top_p"], sampling["top_k"]) == (1.0, 1.0, 0)
        kept = trainer.model.generation_config.temperature == QWEN3_SAMPLING["temperature"]
        checks.append(("sampling exactly as configured, model defaults restored", exact and kept, json.dumps(sampling)))
        del trainer
        torch.cuda.empty_cache()

        lora = make_trainer(policy, f"{tmp}/lora", 1, args.batch, args.completion,
                            LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        base = {n: p.detach().clone() for n, p in lora.model.named_parameters() if "lora_" not in n and "layers.0." in n}
        adapters = {n: p.detach().clone() for n, p in lora.model.named_parameters() if "lora_B" in n}
        lora.train()
        frozen = all(torch.equal(p.detach(), base[n]) for n, p in lora.model.named_parameters() if n in base)
        trained = any(not torch.equal(p.detach(), adapters[n]) for n, p in lora.model.named_parameters() if n in adapters)
        checks.append(("LoRA step: adapters move, base weights frozen", frozen and trained, f"{len(adapters)} lora_B"))
        del lora

        checks.append(offline_check(policy, f"{tmp}/offline", args))
        results["precision"], check = precision_rows(policy)
        checks.append(check)
        results["objectives"], check = objective_table(policy, args)
        checks.append(check)
        results["sdpo_vs_grpo"] = sdpo_over_grpo(policy, tmp, args)

    try:
        import vllm  # noqa: F401

        checks.append(("vLLM colocate", False, "vLLM imports but this script does not drive it yet"))
    except ImportError:
        results["vllm"] = "not installed on this machine: not run"
    results["checks"] = [{"check": name, "passed": ok, "detail": detail} for name, ok, detail in checks]
    return results


def offline_check(policy: Path, output_dir: str, args) -> tuple[str, bool, str]:
    """Two offline steps on the shipped conversations: logged answers, no generation, bf16."""
    from sdpo_interactions.conversations import load_conversation_dataset
    from sdpo_interactions.core.offline import OfflineSDPOConfig, OfflineSDPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    data, _ = load_conversation_dataset(str(Path(__file__).resolve().parents[1] / "data/sample/conversations.jsonl"),
                                        tokenizer)
    config = OfflineSDPOConfig(output_dir=output_dir, per_device_train_batch_size=4, max_steps=2, bf16=True,
                               gradient_checkpointing=True, model_init_kwargs={"dtype": "bfloat16"},
                               optim="adamw_torch", logging_steps=1, save_strategy="no", report_to=[])
    trainer = OfflineSDPOTrainer(model=str(policy), args=config, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return "offline steps on logged conversations", len(losses) == 2 and all(map(_finite, losses)), f"losses {losses}"


def precision_rows(policy: Path) -> tuple[list[dict], tuple[str, bool, str]]:
    """bench/bench_precision.py's rows on this GPU, and the recipes' check."""
    rows = []
    for setup in bench_precision.SETUPS:
        options = argparse.Namespace(run=setup, lr=2e-6, model=str(policy), steps=5, tokens=64, train_layers=2,
                                     device="cuda")
        rows.append(bench_precision.run_one(options))
        torch.cuda.empty_cache()
    print(bench_precision.table(rows))
    default = next(r for r in rows if r["setup"] == "default")
    return rows, ("precision: the recipes' setup keeps the update (ratio >= 0.95)", default["applied_ratio"] >= 0.95,
                  f"applied ratio {default['applied_ratio']:.3f}")


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (the embedded model's)")
    parser.add_argument("--size", choices=list(SIZES), default="1.7b")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="answers per micro-batch (2 micro-batches a step)")
    parser.add_argument("--completion", type=int, default=128, help="max_completion_length")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU: this is the GPU smoke check (the CPU paths are covered by `make test`)")
    logging.basicConfig(level=logging.WARNING)
    results = run(args)
    for check in results["checks"]:
        print(f"{'PASS' if check['passed'] else 'FAIL'}  {check['check']}  ({check['detail']})")
    print(json.dumps({k: v for k, v in results.items() if k != "checks"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all(c["passed"] for c in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
