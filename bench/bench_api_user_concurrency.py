"""How long one training step waits for an API user: serial calls (the research code's way) vs concurrent.

64 requests go through the real SDK (`anthropic` for Claude, `openai` for a served user) to the local server of the
tests, which holds every reply for 300 ms (about a Haiku reply's latency). The ideal wall time at concurrency c is
ceil(64 / c) x 0.3 s. Both users run on the same client layer, so both should show the same speed-up.

    .venv/bin/python bench/bench_api_user_concurrency.py [--wire claude|openai] [--requests 64] [--latency 0.3]
        [--concurrency 16]
"""

import argparse
import math
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from sdpo_interactions.testing.messages_server import MessagesServer  # noqa: E402
from sdpo_interactions.users.api import ClaudeStyleUserSimulator, OpenAIStyleUserSimulator  # noqa: E402


def timed_run(wire: str, url: str, n: int, concurrency: int) -> tuple[float, dict]:
    """Wall seconds for one generate_feedback call of n samples, and the simulator's metrics for it."""
    settings = dict(max_concurrency=concurrency, max_retries=0)
    if wire == "claude":
        sim = ClaudeStyleUserSimulator("concise_casual_beginner", **settings)
    else:
        sim = OpenAIStyleUserSimulator("concise_casual_beginner", base_url=f"{url}/v1", model="user", **settings)
    prompts = [f"Request ID:{i}" for i in range(n)]
    start = time.perf_counter()
    feedback = sim.generate_feedback(prompts, ["An answer."] * n)
    seconds = time.perf_counter() - start
    if feedback != [f"reply to ID:{i}" for i in range(n)]:
        raise SystemExit("replies came back wrong or out of order")
    return seconds, sim.pop_metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wire", choices=("claude", "openai"), default="claude")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the server holds each reply")
    parser.add_argument("--concurrency", type=int, default=16, help="the concurrent setting to compare")
    args = parser.parse_args()

    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-bench-not-a-real-key")
    with MessagesServer(latency=args.latency) as server:
        os.environ["ANTHROPIC_BASE_URL"] = server.url
        sdk = "anthropic" if args.wire == "claude" else "openai"
        print(f"{args.requests} requests, {args.latency * 1000:.0f} ms server latency, real {sdk} SDK over HTTP")
        print(f"{'max_concurrency':>16} {'wall s':>8} {'ideal s':>8} {'overhead':>9} {'in flight':>10}")
        results = {}
        for concurrency in (1, args.concurrency):
            server.reset()
            seconds, metrics = timed_run(args.wire, server.url, args.requests, concurrency)
            ideal = math.ceil(args.requests / concurrency) * args.latency
            results[concurrency] = seconds
            print(
                f"{concurrency:>16} {seconds:>8.2f} {ideal:>8.2f} {seconds / ideal - 1:>8.1%} "
                f"{server.max_in_flight:>10}"
            )
            if metrics["failed"] or server.hits() != args.requests:
                raise SystemExit(f"unexpected failures or retries: {metrics}, {server.hits()} server hits")
    print(f"speed-up: {results[1] / results[args.concurrency]:.1f}x")


if __name__ == "__main__":
    main()
