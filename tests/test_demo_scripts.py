"""The embedded-model conversion and the demo scripts, through their dry runs (the demo's summary of a real run is
tested in tests/test_schedule.py)."""

import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script, *args, env=None):
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})})


def commands(stdout):
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("command:", "commands:")) + 1
    return [shlex.split(line) for line in lines[start:] if not line.startswith("dry run")]


def test_demo_dry_run_prints_train_report_and_heatmap_commands(tmp_path):
    out = tmp_path / "my demo"
    proc = run("demo.sh", "--dry-run", "--", "--learning_rate", "1e-4",
               env={"OUT_DIR": str(out), "STYLE": "poetic", "MAX_STEPS": "3", "PYTHON": "py"})
    assert proc.returncode == 0, proc.stderr
    train, heatmap, report = commands(proc.stdout)
    assert train[:2] == ["py", str(REPO / "train.py")]
    assert train[train.index("--output_dir") + 1] == str(out)
    assert train[train.index("--style") + 1] == "poetic" and train[train.index("--max_steps") + 1] == "3"
    assert train[train.index("--user_model_name_or_path") + 1] == train[train.index("--model_name_or_path") + 1]
    assert train[-2:] == ["--learning_rate", "1e-4"]
    assert report[-1] == str(out) and heatmap[heatmap.index("--token_log") + 1] == str(out / "token_logps.jsonl")
    assert heatmap[heatmap.index("--output_dir") + 1] == str(out / "signal")  # the name every command uses
    assert not out.exists()


def test_prepare_embedded_model_dry_run(tmp_path):
    out = tmp_path / "model dir"
    proc = run("prepare_embedded_model.sh", "--dry-run", env={"OUT_DIR": str(out)})
    assert proc.returncode == 0, proc.stderr
    (command,) = commands(proc.stdout)
    assert command == ["python", str(REPO / "scripts" / "convert_embedded_model.py"), "--output_dir", str(out)]
    assert not out.exists()


@pytest.mark.parametrize("script", ["demo.sh", "prepare_embedded_model.sh"])
def test_unknown_option_exits_2(script):
    proc = run(script, "--fast")
    assert proc.returncode == 2 and "unknown option: --fast" in proc.stderr
