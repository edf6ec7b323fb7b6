"""Every input is checked early and reported clearly: at the command line a known input error is one `error: ...`
line and status 2 (a data file's bad lines: status 1), a bug keeps its traceback, and each bad input of issue 22
fails in seconds, before any model loads, naming the file and what is wrong. Drops are counted, in the log and in
the run settings. No model is loaded here; the embedded tokenizer is, where prompts are measured in tokens."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from trl import TrlParser

import sdpo_interactions.cli.train as train
import sdpo_interactions.cli.train_offline as train_offline
from sdpo_interactions.arguments import check_model_path
from sdpo_interactions.cli.common import run_cli
from sdpo_interactions.conversations import read_conversations
from sdpo_interactions.prompts import load_prompt_dataset_with_counts
from sdpo_interactions.run_files import BadLinesError, InputError, check_output_dir

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "conversations.jsonl"


def turn(role, content):
    return {"role": role, "content": content}


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                              for line in lines))
    return path


# ------------------------------------------------------------------------------------ the command-line boundary
def run_entry(script, *args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_error_line(proc, status, message):
    """The error is one line, the last one, and no traceback: what comes before it is the libraries' import noise."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert re.search(message, lines[-1]), lines[-1]


@pytest.mark.slow  # a process that loads the training stack (about 10 s of CPU)
def test_train_reports_a_trl_flag_error_as_one_line(tmp_path):
    """A ValueError from a dataclass's __post_init__ (here TRL's ModelConfig) is the user's input, not a bug."""
    data = write_lines(tmp_path / "t.jsonl", [{"prompt": "p"}])
    proc = run_entry("train.py", "--train_jsonl", data, "--output_dir", tmp_path / "o", "--load_in_8bit", "true",
                     "--load_in_4bit", "true", cwd=tmp_path)
    assert_one_error_line(proc, 2, r"^error: You can't use 8 bit and 4 bit precision at the same time$")


@pytest.mark.slow  # a process that loads the training stack (about 10 s of CPU)
def test_train_offline_refuses_an_output_dir_that_is_a_file_before_loading(tmp_path, model_dir):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    proc = run_entry("train_offline.py", "--train_jsonl", SAMPLE, "--model_name_or_path", model_dir,
                     "--output_dir", taken, "--bf16", "false", cwd=tmp_path)
    assert_one_error_line(proc, 2, rf"^error: --output_dir {re.escape(str(taken))}: .* is a file, not a folder$")


@pytest.mark.slow  # a process that loads the training stack (about 10 s of CPU)
def test_evaluate_reports_a_missing_run_folder_as_one_line(tmp_path):
    proc = run_entry("evaluate_run.py", "--run_dir", tmp_path / "no-run", "--data_path", SAMPLE, cwd=tmp_path)
    assert_one_error_line(proc, 2, r"^error: --run_dir: no such folder: .*no-run$")


def test_prepare_data_reports_input_errors_as_one_line(tmp_path):
    proc = run_entry("prepare_data.py", "tldr", "--source", tmp_path / "missing", cwd=tmp_path)
    assert_one_error_line(proc, 2, r"^error: --source .*missing: not a folder")
    (tmp_path / "file").write_text("x")
    proc = run_entry("prepare_data.py", "conversations", "--source", SAMPLE, "--output_dir", tmp_path / "file" / "o",
                     cwd=tmp_path)
    assert_one_error_line(proc, 2, r"^error: --output_dir .*file/o: .*file is a file, not a folder$")
    assert proc.stdout == ""  # nothing was read or written


@dataclass
class ToyArguments:
    count: int = field(default=1, metadata={"help": "A count."})

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"--count must be >= 0, got {self.count}")


def test_run_cli_keeps_tracebacks_for_bugs_and_one_line_for_inputs(monkeypatch, capsys):
    def fails_with(error):
        def main(args):
            raise error
        return main

    monkeypatch.setattr(sys, "argv", ["toy", "--count", "-1"])
    with pytest.raises(SystemExit) as exit_:
        run_cli(fails_with(RuntimeError("unreached")), ToyArguments)
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: --count must be >= 0, got -1\n"
    monkeypatch.setattr(sys, "argv", ["toy"])
    with pytest.raises(SystemExit) as exit_:
        run_cli(fails_with(InputError("data.jsonl: the file is empty")), ToyArguments)
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: data.jsonl: the file is empty\n"
    with pytest.raises(SystemExit) as exit_:
        run_cli(fails_with(BadLinesError("d.jsonl", ["d.jsonl:2: bad", "d.jsonl:5: worse"])), ToyArguments)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: d.jsonl: 2 bad lines\n  d.jsonl:2: bad\n  d.jsonl:5: worse\n"
    with pytest.raises(KeyError):  # a bug is not an input error: its traceback stays
        run_cli(fails_with(KeyError("bug")), ToyArguments)


# ---------------------------------------------------------------------------------------------- data files
def test_invalid_utf8_is_named_by_file_line_and_column(tmp_path):
    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": "fine"}, b'{"prompt": "caf\xe9"}', {"prompt": "ok"}])
    where = re.escape(str(prompts))
    with pytest.raises(BadLinesError, match=rf"^{where}:2: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        load_prompt_dataset_with_counts(str(prompts), "")
    logs = write_lines(tmp_path / "c.jsonl", [{"messages": [turn("user", "q"), turn("assistant", "a")]},
                                              b'{"messages": [{"role": "user", "content": "\xff"}]}'])
    with pytest.raises(BadLinesError, match=rf"^{re.escape(str(logs))}:2: not valid UTF-8"):
        read_conversations(str(logs))


def test_every_bad_prompt_line_is_reported_up_to_a_cap(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "fine"}] + [b"{broken"] * 24 + [{"text": "no prompt"}])
    with pytest.raises(BadLinesError) as err:
        load_prompt_dataset_with_counts(str(path), "")
    lines = str(err.value).splitlines()
    assert len(err.value.problems) == 25 and lines[0] == f"{path}: 25 bad lines"
    assert lines[1] == f"  {path}:2: malformed JSON (Expecting property name enclosed in double quotes, column 2)"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 5 more"
    assert err.value.problems[-1] == f'{path}:26: missing "prompt" field'


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_an_empty_data_file_is_named(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: the file is empty"):
        load_prompt_dataset_with_counts(str(path), "")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: the file is empty"):
        read_conversations(str(path))


def test_an_empty_conversations_file_fails_in_main_before_the_trainer(tmp_path, model_dir, monkeypatch):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    monkeypatch.setattr(train_offline, "OfflineSDPOTrainer", None)  # reaching it would be a TypeError
    args = TrlParser(train_offline.ARGUMENTS).parse_args_and_config(
        ["--train_jsonl", str(empty), "--model_name_or_path", model_dir, "--output_dir", str(tmp_path / "o"),
         "--bf16", "false"])
    with pytest.raises(InputError, match="the file is empty"):
        train_offline.main(*args)


# ------------------------------------------------------------------------------------------ model and folders
@pytest.mark.parametrize("value", ["/no/such/model", "./checkpoints/typo", "runs/x/checkpoint-3", "~/models/m"])
def test_a_model_path_that_is_no_folder_and_no_hub_id_fails_on_parsing(tmp_path, value):
    args = ["--train_jsonl", str(SAMPLE), "--output_dir", str(tmp_path / "o"), "--model_name_or_path", value]
    with pytest.raises(InputError, match=rf"^--model_name_or_path {re.escape(value)}: no such folder"):
        TrlParser(train_offline.ARGUMENTS).parse_args_and_config(args)


def test_hub_ids_and_folders_pass_the_model_check(tmp_path, model_dir):
    for value in ("Qwen/Qwen3-8B", "gpt2", model_dir, None):
        check_model_path(value, "--model_name_or_path")
    (tmp_path / "model.gguf").write_text("x")
    with pytest.raises(InputError, match="a file, not a model folder"):
        check_model_path(str(tmp_path / "model.gguf"), "--model_name_or_path")


def test_an_output_dir_that_is_or_sits_in_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "run"):
        with pytest.raises(InputError, match=rf"^--output_dir {re.escape(str(path))}: .*/f is a file, not a folder"):
            check_output_dir(path)
    check_output_dir(tmp_path / "new" / "run")  # a folder that does not exist yet is fine, and is not made
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_an_output_dir_where_nothing_can_be_written_is_refused():
    """Under /sys nothing can be created, root or not: the probe is a real write, not a look at permission bits."""
    with pytest.raises(InputError, match=r"^--output_dir /sys/sdpo-run: cannot write in /sys \("):
        check_output_dir("/sys/sdpo-run")


def test_an_output_dir_on_a_read_only_file_system_is_refused(tmp_path):
    """A read-only tmpfs mounted in a private mount namespace, where root's permission bits allow everything."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unshare (user and mount namespaces) to mount a read-only file system")
    folder = tmp_path / "ro"
    folder.mkdir()
    code = f"from sdpo_interactions.run_files import check_output_dir; check_output_dir({str(folder / 'run')!r})"
    proc = subprocess.run([unshare, "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$1" && exec "$2" -c "$3"', "sh",
                           str(folder), sys.executable, code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"InputError: --output_dir {folder / 'run'}: cannot write in {folder} (Read-only file system)" in proc.stderr


# ------------------------------------------------------------------------------------------------- drops counted
def test_a_megabyte_prompt_is_dropped_and_counted(tmp_path, model_dir, caplog):
    from transformers import AutoTokenizer

    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "short one"}, {"prompt": "word " * 200_000},
                                              {"prompt": "short two"}])
    assert path.stat().st_size > 1_000_000
    with caplog.at_level("INFO", logger="sdpo_interactions.prompts"):
        data, counts = load_prompt_dataset_with_counts(
            str(path), "", tokenizer=AutoTokenizer.from_pretrained(model_dir), max_prompt_tokens=512)
    assert counts == {"prompts": 3, "too_long": 1, "kept": 2}
    assert sorted(p[-1]["content"] for p in data["prompt"]) == ["short one", "short two"]
    assert f"{path}: prompts=3, too_long=1, kept=2" in caplog.text


class TrainerReached(Exception):
    pass


def recording_trainer(seen: dict):
    def trainer(**kwargs):
        seen.update(kwargs)
        raise TrainerReached
    return trainer


def test_online_drop_counts_reach_the_run_settings(tmp_path, model_dir, monkeypatch):
    data = write_lines(tmp_path / "t.jsonl", [{"prompt": "a short post"}, {"prompt": "long " * 3000}])
    seen = {}
    monkeypatch.setattr(train, "OnlineSDPOTrainer", recording_trainer(seen))
    args = TrlParser(train.ARGUMENTS).parse_args_and_config(
        ["--train_jsonl", str(data), "--val_jsonl", str(data), "--model_name_or_path", model_dir,
         "--output_dir", str(tmp_path / "o"), "--bf16", "false", "--max_prompt_length", "256",
         "--user_api_base", "http://127.0.0.1:9/v1", "--user_api_model", "m"])
    with pytest.raises(TrainerReached):
        train.main(*args)
    expected = {"prompts": 2, "too_long": 1, "kept": 1}
    assert seen["run_settings"]["data_counts"] == expected and seen["run_settings"]["val_data_counts"] == expected


def test_offline_drop_counts_reach_the_run_settings(tmp_path, model_dir, monkeypatch):
    ok = [turn("user", "Explain DNS."), turn("assistant", "It maps names to addresses."), turn("user", "Thanks.")]
    empty = [turn("user", "Hi"), turn("assistant", " "), turn("user", "Hello?")]
    logs = write_lines(tmp_path / "logs.jsonl", [{"messages": ok}, {"messages": ok}, {"messages": empty}])
    seen = {}
    monkeypatch.setattr(train_offline, "OfflineSDPOTrainer", recording_trainer(seen))
    args = TrlParser(train_offline.ARGUMENTS).parse_args_and_config(
        ["--train_jsonl", str(logs), "--val_jsonl", str(SAMPLE), "--model_name_or_path", model_dir,
         "--output_dir", str(tmp_path / "o"), "--bf16", "false"])
    with pytest.raises(TrainerReached):
        train_offline.main(*args)
    counts = seen["run_settings"]["data_counts"]
    assert (counts["conversations"], counts["samples"], counts["duplicate"], counts["empty_turn"]) == (3, 3, 1, 1)
    assert seen["run_settings"]["val_data_counts"]["conversations"] == 6


def help_arguments(name):
    from sdpo_interactions.cli import eval_benchmarks, evaluate, serve_live

    return {"train": train.ARGUMENTS, "train_offline": train_offline.ARGUMENTS, "evaluate": (evaluate.EvalArguments,),
            "eval_benchmarks": (eval_benchmarks.BenchmarkArguments, eval_benchmarks.HarnessSettings,
                                eval_benchmarks.AnnotatorSettings),
            "serve_live": (serve_live.LiveArguments,)}[name]


@pytest.mark.parametrize("command", ["train", "train_offline", "evaluate", "eval_benchmarks", "serve_live"])
def test_help_states_each_default_once(command, capsys):
    """transformers' parser appends "(default: ...)" to every flag: never after a help text that gives its own
    default, and never "(default: None)"."""
    from sdpo_interactions.cli.common import parse_arguments

    with pytest.raises(SystemExit):
        parse_arguments(help_arguments(command), ["--help"])
    options = [" ".join(o.split()) for o in capsys.readouterr().out.split("\n  -")[1:]]  # one entry per option
    assert len(options) > 5
    assert [o.split()[0] for o in options if o.count("(default") > 1 or "(default: None)" in o] == []
    assert any("(default: " in o for o in options)  # the defaults the help texts do not state are still shown
