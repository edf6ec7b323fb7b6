"""Per-rank local user simulation against one shared OpenAI-compatible user server, at 2 processes on the CPU.

    python bench/bench_user_service.py [--model models/smollm2-135m-instruct] [--steps 3] [--batch 4] [--reply 32]

Both arms are train.py under `torchrun --nproc_per_node 2` on the same prompts: (a) every rank loads the user model
and generates its own replies (--user_model_name_or_path); (b) one `transformers serve` process holds the only copy
and both ranks send it their requests concurrently (--user_api_base). The user replies greedily with up to
`--reply` tokens in both. Prints the trainer's own `user_sim/seconds` (the slowest rank's simulation time in a step),
mean over steps after the first, the ratio, and the user model's resident memory per rank in arm (a).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]

from sdpo_interactions.testing.openai_server import TransformersServer  # noqa: E402
from sdpo_interactions.testing.runs import REQUESTS, finish, start, subprocess_env, write_prompts  # noqa: E402


def run_arm(name: str, user_flags: list[str], args, tmp: Path) -> list[float]:
    prompts = write_prompts(tmp / "prompts.jsonl", REQUESTS * 4)
    out = tmp / name
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
        "--train_jsonl", str(prompts), "--system_prompt", "general", "--model_name_or_path", args.model,
        "--output_dir", str(out), *user_flags, "--user_temperature", "0", "--user_top_k", "0",
        "--user_max_new_tokens", str(args.reply), "--max_completion_length", "16",
        "--per_device_train_batch_size", str(args.batch), "--max_steps", str(args.steps), "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--bf16", "false", "--gradient_checkpointing", "false",
        "--seed", "3", "--dataloader_num_workers", "0", "--token_log_samples", "0",
    ]
    log = tmp / f"{name}.log"
    started = time.perf_counter()
    if finish(start(command, log, subprocess_env()), log) != 0:
        raise SystemExit(f"arm {name} failed:\n{log.read_text()[-3000:]}")
    print(f"  arm {name}: {time.perf_counter() - started:.0f} s in all", flush=True)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["user_sim/seconds"] for entry in history if "user_sim/seconds" in entry]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="answers per rank per step")
    parser.add_argument("--reply", type=int, default=32, help="longest user reply, in tokens")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = run_arm("local", ["--user_model_name_or_path", args.model], args, tmp)
        # The model folder's dtype, as each rank's local copy loads it (dtype="auto").
        with TransformersServer(args.model, tmp / "serve.log", threads=2, dtype="auto") as server:
            served = run_arm("served", ["--user_api_base", server.base_url, "--user_api_model", server.model,
                                        "--user_api_max_concurrency", str(args.batch),
                                        "--user_api_chat_template_kwargs", "{}"], args, tmp)  # serve refuses it
    local_s, served_s = mean(local[1:] or local), mean(served[1:] or served)
    weights = sum(path.stat().st_size for path in Path(args.model).glob("*.safetensors"))
    print(f"2 processes x {args.batch} answers a step, user replies up to {args.reply} tokens, {args.steps} steps:")
    print(f"  per-rank local user:   {local_s:.2f} s of simulation a step  (per step: {[round(s, 2) for s in local]})")
    print(f"  one shared server:     {served_s:.2f} s of simulation a step  (per step: {[round(s, 2) for s in served]})")
    print(f"  ratio local / shared:  {local_s / served_s:.2f}")
    print(f"  user model weights held per rank by the local arm: {weights / 2**20:.0f} MiB as stored (none when served)")


if __name__ == "__main__":
    main()
