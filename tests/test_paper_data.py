"""The offline headline data (issue 24, part 5): the launcher's default is the paper's Table 2 (WildFeedback), Table
3's WildChat slice is the documented alternative, and a run prints what its data file holds next to the paper's
counts (sdpo_interactions.paper_data), counted by hand here; torch-free, one line per problem."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from sdpo_interactions.paper_data import PAPER_DATA, comparison_lines, dataset_of, file_counts

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "conversations.jsonl"


def write(path: Path, conversations) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


U, A = "user", "assistant"


def turns(*roles):
    return [{"role": role, "content": f"turn {i}"} for i, role in enumerate(roles)]


def test_the_counts_of_a_conversations_file_by_hand(tmp_path):
    path = write(tmp_path / "wildfeedback_conversations" / "train.jsonl", [
        turns(U, A, U, A, U),  # two (answer, reply) samples
        turns(U, A),  # no follow-up: no sample
        [{"role": "system", "content": "s"}, *turns(U, A, U)],  # one
    ])
    assert file_counts(str(path)) == {"conversations": 3, "with_follow_up": 2, "samples": 3}
    assert file_counts(str(SAMPLE)) == {"conversations": 6, "with_follow_up": 6, "samples": 10}
    assert dataset_of(str(path)) == "wildfeedback"
    assert dataset_of(str(tmp_path / "wildchat_conversations" / "train.jsonl")) == "wildchat"
    assert dataset_of(str(SAMPLE)) is None
    lines = comparison_lines(str(path), "wildfeedback", train_n=2)
    assert lines == [
        f"data: {path} holds 3 conversations (2 with a follow-up) and 3 (answer, reply) samples, before the run's "
        "token budgets",
        "  the run trains on a seeded random 2 of them (TRAIN_N)",
        f"  the paper's Table 2, WildFeedback (microsoft/WildFeedback): {PAPER_DATA['wildfeedback'].figures}",
    ]
    assert "about 14k of them with a follow-up, about 50k samples" in lines[2]


def command(*args):
    return subprocess.run([sys.executable, "-c", "import sys; from sdpo_interactions.paper_data import main; "
                           "code = main(sys.argv[1:]); assert 'torch' not in sys.modules; sys.exit(code)", *args],
                          capture_output=True, text=True, timeout=60)


def test_the_command_loads_no_torch_and_names_a_bad_line(tmp_path):
    result = command(str(SAMPLE), "--dataset", "wildchat")
    assert result.returncode == 0, result.stderr
    assert "the paper's Table 3, a random slice of English WildChat" in result.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    result = command(str(bad))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "bad.jsonl:2" in result.stderr


def run_script(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("TRAIN_JSONL", "TRAIN_N", "OUTPUT_DIR", "SCRATCH")}
    return subprocess.run(["bash", str(REPO / "scripts" / "train_offline_sdpo.sh"), *args],
                          env={**base, "PYTHON": sys.executable, **env}, capture_output=True, text=True, timeout=120)


def test_the_offline_launcher_defaults_to_table_2_and_prints_the_data_next_to_the_paper(tmp_path):
    default = run_script("--dry-run", OUTPUT_DIR=str(tmp_path / "out"))
    assert "TRAIN_JSONL: no such file" in default.stderr and "prepare_data_wildfeedback.sh" in default.stderr
    argv = shlex.split(default.stdout.splitlines()[default.stdout.splitlines().index("command:") + 1])
    assert argv[argv.index("--train_jsonl") + 1] == str(REPO / "data/wildfeedback_conversations/train.jsonl")
    assert "Table 3" in run_script("--help").stdout and "TRAIN_N=50000" in run_script("--help").stdout
    data = write(tmp_path / "wildchat_conversations" / "train.jsonl", [turns(U, A, U)] * 2 + [turns(U, A, U, A, U)])
    result = run_script("--dry-run", TRAIN_JSONL=str(data), TRAIN_N="50000", OUTPUT_DIR=str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [
        f"data: {data} holds 3 conversations (3 with a follow-up) and 4 (answer, reply) samples, before the run's "
        "token budgets",
        "  the run trains on a seeded random 4 of them (TRAIN_N)",
        f"  the paper's Table 3, a random slice of English WildChat (allenai/WildChat): {PAPER_DATA['wildchat'].figures}"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    stopped = run_script(TRAIN_JSONL=str(bad), OUTPUT_DIR=str(tmp_path / "out"), PATH=os.environ["PATH"])
    assert stopped.returncode == 1 and "bad.jsonl:1" in stopped.stderr and "command:" not in stopped.stdout
