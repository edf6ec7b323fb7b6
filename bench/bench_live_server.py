"""The live server's load and crash figures, on 127.0.0.1 with real processes.

    python bench/bench_live_server.py [--model tiny|PATH] [--clients 32] [--conversations 10] [--crash-rounds 3]

Load: `--clients` concurrent OpenAI SDK clients, each holding `--conversations` two-turn conversations (a request,
the answer, a follow-up that makes a sample, its answer), while the learner trains on the samples. Prints requests,
errors, p50/p95 latency, throughput, and lost conversations and answers (given to a client, missing from the store
afterwards). Crash: `--crash-rounds` times, kill -9 during an update and restart: answers lost, samples of the
interrupted update skipped, samples trained twice, and the version served after the restart against the last one
published. The default model is a tiny random one on the embedded tokenizer (the figures are the server's own);
`--model models/smollm2-135m-instruct` measures the embedded model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sdpo_interactions.testing.live_server import LiveServer, crash_test, load_test, sample_audit, tiny_model

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "models" / "smollm2-135m-instruct"
SETTINGS = ("--max_completion_tokens", "8", "--monitor_probe_tokens", "8", "--lora_r", "8", "--lora_alpha", "16",
            "--min_seconds_between_updates", "1", "--generation_batch_size", "16")


def load(model: str, tmp: Path, args) -> dict:
    with LiveServer(model, tmp / "load", tmp / "load.log", *SETTINGS, "--samples_per_update", "8",
                    threads=args.threads) as server:
        figures = load_test(server, args.clients, args.conversations, max_tokens=args.max_tokens)
        server.wait_for(lambda: not server.rows("SELECT 1 FROM samples WHERE state IN ('pending', 'claimed')"),
                        timeout=1800, what="the learner to catch up")
        audit = sample_audit(server)
        updates = {r["state"]: r["n"] for r in server.rows("SELECT state, COUNT(*) AS n FROM updates GROUP BY state")}
    return {**figures.summary(), "updates": updates, "trained_twice": audit["trained_twice"]}


def crashes(model: str, tmp: Path, args) -> list[dict]:
    rounds = []
    for k in range(args.crash_rounds):
        figures = crash_test(model, tmp / f"crash{k}", tmp / f"crash{k}.log", *SETTINGS, "--samples_per_update", "3",
                             "--max_sample_wait_seconds", "1")
        rounds.append({key: figures[key] for key in (
            "acknowledged_answers", "lost_answers", "interrupted_update_state", "samples_of_interrupted_update",
            "back_to_pending", "skipped", "trained_twice", "last_published_before_crash", "served_after_restart",
            "answer_after_restart_by")})
        print(f"  crash round {k + 1}: {json.dumps(rounds[-1])}", flush=True)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (a random 2-layer model) or a model folder")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=10, help="two-turn conversations per client")
    parser.add_argument("--max-tokens", type=int, default=8, help="longest answer, in tokens")
    parser.add_argument("--crash-rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the server process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "tiny", str(EMBEDDED)) if args.model == "tiny" else args.model
        print(f"load: {args.clients} clients x {args.conversations} two-turn conversations, model {args.model}",
              flush=True)
        figures = load(model, tmp, args)
        print(json.dumps(figures, indent=1), flush=True)
        print(f"crash: {args.crash_rounds} rounds of kill -9 during an update, then restart", flush=True)
        rounds = crashes(model, tmp, args)
    print("summary:")
    print(f"  load  p50 {figures['p50_latency_s']} s, p95 {figures['p95_latency_s']} s, "
          f"{figures['requests']} requests, "
          f"{figures['errors']} errors, {figures['lost_conversations']} lost conversations, "
          f"{figures['lost_answers']} lost answers, {figures['requests_per_second']} requests/s")
    served_last = sum(r["served_after_restart"] == r["last_published_before_crash"] for r in rounds)
    print(f"  crash {len(rounds)} rounds: lost answers {sum(r['lost_answers'] for r in rounds)}, skipped samples "
          f"{sum(r['skipped'] for r in rounds)}, trained twice {sum(r['trained_twice'] for r in rounds)}, served the "
          f"last published version after restart in {served_last}/{len(rounds)}, every kill inside an update: "
          f"{all(r['interrupted_update_state'] == 'interrupted' for r in rounds)}")


if __name__ == "__main__":
    main()
