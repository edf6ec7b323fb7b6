"""The README's offline walkthrough runs as written (issue 21): the commands are read from the README itself, their
output folders moved into a temporary folder and their lengths shortened, then run one after the other."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_interactions.run_files import read_run_settings
from sdpo_interactions.testing.runs import subprocess_env

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- offline-walkthrough[^>]*-->\s*```bash\n(.*?)```", re.S)
# What the test shortens, value by value: the walkthrough's own numbers are already CPU-sized.
SHORTER = {"--max_steps": "2", "--save_steps": "1", "--max_completion_length": "96", "--eval_n": "1",
           "--max_new_tokens": "8"}


def walkthrough_commands() -> list[list[str]]:
    block = BLOCK.search((REPO / "README.md").read_text()).group(1)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def adapted(argv: list[str], tmp: Path) -> list[str]:
    """The command with python as this interpreter, output folders under `tmp`, and the SHORTER values."""
    out = [sys.executable if argv[0] == "python" else argv[0]]
    for i, arg in enumerate(argv[1:], start=1):
        flag = argv[i - 1]
        if flag in SHORTER:
            arg = SHORTER[flag]
        elif arg.startswith(("data/my_conversations", "runs/")):
            arg = str(tmp / arg)
        out.append(arg)
    return out


def test_the_walkthrough_has_the_three_steps():
    commands = walkthrough_commands()
    assert [c[1] for c in commands] == ["prepare_data.py", "train_offline.py", "evaluate_run.py"]
    for command in commands:
        for flag in SHORTER:
            if flag in command:
                assert command[command.index(flag) + 1].isdigit()


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    for argv in walkthrough_commands():
        command = adapted(argv, tmp_path)
        done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    run = tmp_path / "runs" / "my-offline"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert read_run_settings(run)["distillation_mode"] == "sampled_token"
    table = (run / "eval" / "win_rates.md").read_text()
    assert "checkpoint-1" in table or "| 1 |" in table
