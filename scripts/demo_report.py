"""Print a demo run's summary: where its files are, what the user said to the last logged step's answers, how the
hindsight signal looked, and whether the policy reads its feedback. Online runs (a simulated user replies to the
policy's own answers) and offline runs (logged answers and the user's real next messages) alike.

    python scripts/demo_report.py runs/demo
"""

import json
import statistics
import sys
from pathlib import Path

# mode (the run settings' "mode"; online runs have none) -> the heading of the last step's samples, and its labels
LAST_STEP = {
    "online": ("What the simulated user said to the policy's answers", "answer", "feedback"),
    "offline": ("The logged answers and the user's real next messages", "logged answer", "user's reply"),
}


def print_files(run_dir: Path, records: list[dict]) -> None:
    heatmap = run_dir / "signal" / "signal.html"
    print(f"\nRun folder:        {run_dir}")
    print(f"Final weights:     {run_dir / 'model.safetensors'}")
    print(f"Checkpoints:       {', '.join(sorted(p.name for p in run_dir.glob('checkpoint-*'))) or 'none'}")
    print(f"Token log:         {run_dir / 'token_logps.jsonl'} ({len(records)} records)")
    if heatmap.is_file():
        print(f"Signal heatmap:    {heatmap} (and signal.png)")
    print(f"Run settings:      {run_dir / 'sdpo_run_settings.json'}")
    print(f"Metrics per step:  {run_dir / 'trainer_state.json'} (log_history)")


def print_last_step(records: list[dict], mode: str, shown: int = 3) -> None:
    heading, answer, feedback = LAST_STEP[mode]
    last = max(r["step"] for r in records)
    print(f"\n{heading} (step {last}):")
    width = max(len(answer), len(feedback)) + 2
    for record in [r for r in records if r["step"] == last][:shown]:
        signal = record["signal"]
        print(f"  {answer + ':':<{width}}{record['completion'][:100]!r}")
        print(f"  {feedback + ':':<{width}}{record['feedback'][:100]!r}")
        print(f"  {'signal:':<{width}}mean {statistics.fmean(signal):+.3f}, sum {sum(signal):+.2f} over "
              f"{len(signal)} tokens")


def print_signal_per_step(records: list[dict]) -> None:
    print("\nMean token signal per step:")
    for step in sorted({r["step"] for r in records}):
        values = [v for r in records if r["step"] == step for v in r["signal"]]
        print(f"  step {step}: {statistics.fmean(values):+.3f} (mean |signal| {statistics.fmean(map(abs, values)):.3f})")


def print_specificity(run_dir: Path) -> None:
    state = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))
    specificity = [(e["step"], e) for e in state["log_history"] if "sdpo/feedback_specificity" in e]
    if not specificity:
        return
    print("\nIs the policy reading its feedback? mean |signal| with its own feedback vs a stranger's:")
    for step, entry in specificity:
        print(f"  step {step}: own {entry['sdpo/signal_abs_own']:.3f}, stranger's "
              f"{entry['sdpo/signal_abs_unrelated']:.3f}, specificity {entry['sdpo/feedback_specificity']:+.3f}")
    print("  (near 0: a stranger's reply moves the signal as much as the user's own; the model is not reading it)")


def main(run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "token_logps.jsonl").read_text(encoding="utf-8").splitlines()]
    settings_path = run_dir / "sdpo_run_settings.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    print_files(run_dir, records)
    if records:
        print_last_step(records, settings.get("mode", "online"))
        print_signal_per_step(records)
    print_specificity(run_dir)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
