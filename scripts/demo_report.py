"""Print where a run's files are, a few of the simulated user's replies, and how the hindsight signal looked."""

import json
import statistics
import sys
from pathlib import Path


def main(run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "token_logps.jsonl").read_text(encoding="utf-8").splitlines()]
    print(f"\nRun folder:        {run_dir}")
    print(f"Final weights:     {run_dir / 'model.safetensors'}")
    print(f"Checkpoints:       {', '.join(sorted(p.name for p in run_dir.glob('checkpoint-*')))}")
    print(f"Token log:         {run_dir / 'token_logps.jsonl'} ({len(records)} records)")
    print(f"Run settings:      {run_dir / 'sdpo_run_settings.json'}")
    print(f"Metrics per step:  {run_dir / 'trainer_state.json'} (log_history)")
    print("\nWhat the simulated user said (last step):")
    last = max(r["step"] for r in records)
    for record in [r for r in records if r["step"] == last][:3]:
        print(f"  answer:   {record['completion'][:100]!r}")
        print(f"  feedback: {record['feedback'][:100]!r}")
        signal = record["signal"]
        print(f"  signal:   mean {statistics.fmean(signal):+.3f}, sum {sum(signal):+.2f} over {len(signal)} tokens")
    print("\nMean token signal per step:")
    for step in sorted({r["step"] for r in records}):
        values = [v for r in records if r["step"] == step for v in r["signal"]]
        print(f"  step {step}: {statistics.fmean(values):+.3f} (mean |signal| {statistics.fmean(map(abs, values)):.3f})")
    state = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))
    specificity = [(e["step"], e) for e in state["log_history"] if "sdpo/feedback_specificity" in e]
    if specificity:
        print("\nIs the policy reading its feedback? mean |signal| with its own feedback vs a stranger's:")
        for step, entry in specificity:
            print(f"  step {step}: own {entry['sdpo/signal_abs_own']:.3f}, stranger's "
                  f"{entry['sdpo/signal_abs_unrelated']:.3f}, specificity {entry['sdpo/feedback_specificity']:+.3f}")
        print("  (near 0: a stranger's reply moves the signal as much as the user's own; the model is not reading it)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
