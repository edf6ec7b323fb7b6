"""Faults a long run meets (issue 22): kills at the wrong moment, a disk that fills, signals, a dead rank, a user that
hangs or stops answering. Each fault ends in a state a resume can continue from exactly, or in one clear line.

The fast tests work on checkpoint folders and the save wrapper directly. The slow ones are real runs of train.py's
main (tests/sdpo_entry.py) on a tiny random model, whose user is an OpenAI-compatible loopback server
(testing/messages_server.py) that hangs on one request until the per-request timeout, every time it is asked.
Runs that a fault interrupted are resumed and compared bit for bit with a run that was never interrupted: both
execute the same float32 CPU kernels in the same order, so any difference means some state was not restored.
"""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sdpo_entry import ROOT, common_flags, launch, save_tiny_model, wait_until_ready

from sdpo_interactions.core.token_log import TOKEN_LOG_NAME
from sdpo_interactions.run_files import (
    RUN_SETTINGS_NAME,
    DiskFullError,
    InputError,
    checkpoint_missing,
    complete_checkpoints,
    disk_full_named,
    latest_complete_checkpoint,
    resolve_checkpoint,
    rotate_checkpoints,
)
from sdpo_interactions.testing.messages_server import MessagesServer, request_tag
from sdpo_interactions.testing.runs import REQUESTS, drop_weights, finish, read_jsonl, start, write_prompts

# -- checkpoint folders --------------------------------------------------------------------------------------------

PLAIN = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
         "training_args.bin")


def fake_checkpoint(path: Path, files=PLAIN, **settings) -> Path:
    """A checkpoint folder with these (empty) files and run settings, as transformers and the trainer lay it out."""
    path.mkdir(parents=True)
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("{}")
    (path / RUN_SETTINGS_NAME).write_text(json.dumps({"global_step": 1, **settings}))
    return path


def test_a_checkpoint_is_complete_only_with_everything_a_resume_reads(tmp_path):
    assert checkpoint_missing(fake_checkpoint(tmp_path / "plain")) == []
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                 RUN_SETTINGS_NAME):
        folder = fake_checkpoint(tmp_path / f"without-{name}")
        (folder / name).unlink()
        missing = checkpoint_missing(folder)
        assert len(missing) == 1 and name.split(".")[0] in missing[0], (name, missing)
    # what the kill during the rotation left: weights, trainer state and run settings only
    gutted = fake_checkpoint(tmp_path / "gutted", files=("config.json", "model.safetensors", "trainer_state.json"))
    assert checkpoint_missing(gutted) == ["optimizer.pt", "scheduler.pt", "rng_state.pth"]


def test_each_layout_is_checked_for_its_own_files(tmp_path):
    lora = ("adapter_model.safetensors", "adapter_config.json", *PLAIN[2:])
    assert checkpoint_missing(fake_checkpoint(tmp_path / "lora", files=lora)) == []
    # Two processes: one RNG file a rank, as many as the run settings say.
    two = [name for name in PLAIN if name != "rng_state.pth"] + ["rng_state_0.pth"]
    assert checkpoint_missing(fake_checkpoint(tmp_path / "two", files=two, world_size=2)) == ["rng_state_1.pth"]
    assert checkpoint_missing(fake_checkpoint(tmp_path / "older", files=two)) == []  # settings without world_size
    # DeepSpeed and FSDP keep weights and optimizer in their own files: checked leniently, but checked.
    deepspeed = ("global_step4/mp_rank_00_model_states.pt", "global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "latest", "rng_state_0.pth", "trainer_state.json")
    assert checkpoint_missing(fake_checkpoint(tmp_path / "ds", files=deepspeed, world_size=1)) == ["rng_state.pth"]
    assert checkpoint_missing(fake_checkpoint(tmp_path / "ds2", files=deepspeed)) == []
    assert "DeepSpeed optimizer states" in checkpoint_missing(
        fake_checkpoint(tmp_path / "ds3", files=deepspeed[:1] + deepspeed[2:]))[0]
    fsdp = ("pytorch_model_fsdp_0/__0_0.distcp", "optimizer_0/__0_0.distcp", "scheduler.pt", "rng_state_0.pth",
            "rng_state_1.pth", "trainer_state.json")
    assert checkpoint_missing(fake_checkpoint(tmp_path / "fsdp", files=fsdp, world_size=2)) == []
    assert checkpoint_missing(fake_checkpoint(tmp_path / "fsdp2", files=fsdp[:1] + fsdp[2:], world_size=2)) == [
        "optimizer.pt"]


def test_last_passes_over_a_gutted_checkpoint_and_says_which_one_it_takes(tmp_path, caplog):
    fake_checkpoint(tmp_path / "checkpoint-3")
    fake_checkpoint(tmp_path / "checkpoint-6", files=("config.json", "model.safetensors", "trainer_state.json"))
    with caplog.at_level(logging.INFO):
        assert resolve_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-3")
    assert f"Skipping incomplete checkpoint {tmp_path / 'checkpoint-6'} (no optimizer.pt" in caplog.text
    assert f"{tmp_path / 'checkpoint-3'} is the newest complete checkpoint" in caplog.text
    # An evaluation reads only the weights: the gutted checkpoint is still one it can score.
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3, 6]


def test_a_named_incomplete_checkpoint_is_refused_with_what_it_lacks(tmp_path):
    gutted = fake_checkpoint(tmp_path / "checkpoint-6", files=("config.json", "model.safetensors",
                                                               "trainer_state.json"))
    with pytest.raises(InputError) as refused:
        resolve_checkpoint(str(gutted), str(tmp_path))
    message = str(refused.value)
    assert "\n" not in message and str(gutted) in message
    assert "no optimizer.pt, no scheduler.pt, no rng_state.pth" in message
    with pytest.raises(InputError, match="no complete checkpoint"):
        resolve_checkpoint("last", str(tmp_path))


def test_a_model_only_checkpoint_says_so_and_refuses_an_exact_resume(tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint-2", files=("config.json", "model.safetensors",
                                                               "trainer_state.json"), save_only_model=True)
    assert checkpoint_missing(folder) == []  # complete for what it is: weights to evaluate
    for value in ("last", str(folder)):
        with pytest.raises(InputError, match="save_only_model: it holds the weights but no optimizer, scheduler or RNG"
                                             " state, so a resume cannot continue the run exactly"):
            resolve_checkpoint(value, str(tmp_path))


def test_rotation_keeps_the_newest_complete_checkpoints_and_unmarks_before_deleting(tmp_path, monkeypatch):
    for step in (1, 2, 3, 4):
        fake_checkpoint(tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-5").mkdir()  # a save cut short
    marked_when_deleted = {}

    def killed_halfway(path, *args, **kwargs):  # a kill -9 once the deletion has begun
        marked_when_deleted[Path(path).name] = (Path(path) / RUN_SETTINGS_NAME).exists()
        (Path(path) / "optimizer.pt").unlink(missing_ok=True)

    monkeypatch.setattr(shutil, "rmtree", killed_halfway)
    deleted = rotate_checkpoints(tmp_path, keep=3)
    assert [p.name for p in deleted] == ["checkpoint-1", "checkpoint-5"]  # the newest three complete ones stay
    assert marked_when_deleted == {"checkpoint-1": False, "checkpoint-5": False}
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2, 3, 4]  # 1 no longer looks complete
    # The best model stays, within the limit (as transformers counts it); deletions cut short are finished.
    assert [p.name for p in rotate_checkpoints(tmp_path, keep=2, protect=str(tmp_path / "checkpoint-2"))] == [
        "checkpoint-1", "checkpoint-3", "checkpoint-5"]


# -- a full disk ---------------------------------------------------------------------------------------------------


def test_a_save_that_fills_the_disk_names_the_folder_the_need_and_the_free_space(tmp_path):
    folder = tmp_path / "checkpoint-7"
    with pytest.raises(DiskFullError) as full:
        with disk_full_named(folder, needed=3_000_000):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9216 vs 9110") from \
                OSError(errno.ENOSPC, "No space left on device")
    message = str(full.value)
    assert str(folder) in message and "needs about 3.0 MB" in message and " free there" in message
    assert isinstance(full.value, OSError) and full.value.exit_code == 1
    with pytest.raises(DiskFullError, match="a checkpoint needs about"):  # torch says nothing, the free space does
        with disk_full_named(folder, needed=shutil.disk_usage(tmp_path).free * 2):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    with pytest.raises(ValueError, match="not about space"):  # anything else passes unchanged
        with disk_full_named(folder, needed=1):
            raise ValueError("not about space")


# -- real runs -------------------------------------------------------------------------------------------------------

MAX_STEPS = 6
HANG_TAG = "hang"
USER_TIMEOUT = 3.0
PROMPTS = [f"{request} (ID:{HANG_TAG if i == 1 else i})" for i, request in enumerate(REQUESTS)]
# Six prompts, two answers a step: three steps an epoch. A checkpoint every two steps keeping one (so the save of
# step 4 deletes checkpoint-2), metrics and the token log's window every three (so that window straddles a save).
RUN = ["--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
       "--save_steps", "2", "--save_total_limit", "1", "--logging_steps", "3", "--token_log_samples", "2",
       "--keep_user", "true", "--user_api_model", "served-user", "--user_api_timeout", str(USER_TIMEOUT),
       "--user_api_max_retries", "0", "--user_api_max_failed_frac", "0.5", "--user_max_new_tokens", "16"]
FAIL_FROM_REQUEST = 7  # the abort run's user fails every request from the seventh on: step 4


class ServedUser(MessagesServer):
    """The user: replies name the request (`ID:<n>`), the `ID:hang` request hangs past the client's timeout, and
    with `fail_from` every request from that one on gets an empty reply (a failure the client counts)."""

    def __init__(self, fail_from=None):
        super().__init__(reply=self.answer)
        self.fail_from = fail_from
        self.add_fault(HANG_TAG, "slow", delay=60 * USER_TIMEOUT, times=None)

    def answer(self, body):
        if self.fail_from is not None and self.hits() >= self.fail_from:
            return ""
        return f"About ID:{request_tag(body)}: shorter, please."


def run_with_user(base: Path, output: str, name: str, model: Path, extra=(), fail_from=None) -> tuple[int, str]:
    """A run of RUN's settings into base/`output`, logged to base/`name`.log, against its own user server; returns
    (exit code, log)."""
    prompts = base / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts, PROMPTS)
    log = base / f"{name}.log"
    with ServedUser(fail_from) as user:
        flags = common_flags(prompts, base / output, base / f"{name}-records", model) + RUN + list(extra)
        code = finish(launch(flags + ["--user_api_base", f"{user.url}/v1"], log), log)
    return code, log.read_text()


@pytest.fixture(scope="module")
def entry_model_dir(tmp_path_factory) -> Path:
    """The tiny model of the processes this module starts (sdpo_entry.save_tiny_model), named apart from the session
    fixture tiny_model_dir, which is another model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def settings_of(folder: Path) -> dict:
    return json.loads((folder / RUN_SETTINGS_NAME).read_text())


def weights_differ(a: Path, b: Path) -> list[str]:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return [name for name in x if not torch.equal(x[name], y[name])]


def trained_steps(folder: Path) -> list[tuple]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [(e["step"], e["learning_rate"], e["grad_norm"]) for e in history if "grad_norm" in e]


def token_log_keys(folder: Path) -> list[tuple]:
    return [(r["step"], r["prompt"], r["completion_ids"], r["feedback"]) for r in read_jsonl(folder / TOKEN_LOG_NAME)]


@pytest.fixture(scope="module")
def straight(entry_model_dir, tmp_path_factory):
    """The run no fault interrupted, which the resumed ones must reproduce exactly."""
    base = tmp_path_factory.mktemp("faults")
    code, log = run_with_user(base, "straight", "straight", entry_model_dir)
    assert code == 0, log[-3000:]
    yield base
    drop_weights(base)


@pytest.fixture(scope="module")
def killed_in_rotation(straight, entry_model_dir):
    """A run killed by SIGKILL while the save of step 4 deletes checkpoint-2 (after the files a resume needs are
    gone, as the issue found them), then resumed with `last`."""
    base = straight
    killed = run_with_user(base, "run", "killed", entry_model_dir, ["--kill_deleting_checkpoint", "2"])
    after_kill = {
        "folders": {p.name: sorted(f.name for f in p.iterdir()) for p in (base / "run").glob("checkpoint-*")},
        "latest": latest_complete_checkpoint(base / "run"),
        "settings": settings_of(base / "run"),
    }
    resumed = run_with_user(base, "run", "resumed", entry_model_dir, ["--resume_from_checkpoint", "last"])
    return dict(base=base, killed=killed, after_kill=after_kill, resumed=resumed)


@pytest.mark.slow
def test_a_kill_during_rotation_leaves_the_new_checkpoint_complete_and_the_old_one_unmarked(killed_in_rotation):
    run = killed_in_rotation
    assert run["killed"][0] == -signal.SIGKILL, run["killed"][1][-3000:]
    folders = run["after_kill"]["folders"]
    assert RUN_SETTINGS_NAME not in folders["checkpoint-2"] and "optimizer.pt" not in folders["checkpoint-2"]
    assert run["after_kill"]["latest"] == str(run["base"] / "run" / "checkpoint-4")
    # the top-level settings were rewritten with that checkpoint
    assert run["after_kill"]["settings"]["global_step"] == 4
    assert run["after_kill"]["settings"]["interactions"]["answers"] == 8


@pytest.mark.slow
def test_the_resume_after_a_kill_during_rotation_is_exact_and_says_where_it_resumed(killed_in_rotation):
    run, base = killed_in_rotation, killed_in_rotation["base"]
    assert run["resumed"][0] == 0, run["resumed"][1][-3000:]
    assert f"Resuming from {base / 'run' / 'checkpoint-4'} (step 4)" in run["resumed"][1]
    assert trained_steps(base / "run") == trained_steps(base / "straight")  # the scheduler went on, not over
    assert not weights_differ(base / "run", base / "straight")


@pytest.mark.slow
def test_the_token_log_survives_a_kill_with_logging_steps_over_one(killed_in_rotation):
    base = killed_in_rotation["base"]
    resumed, straight = token_log_keys(base / "run"), token_log_keys(base / "straight")
    assert resumed == straight  # no step lost with the open window, none repeated
    assert [step for step, *_ in resumed] == sorted(step for step, *_ in resumed)
    # Windows of two samples, filled at the first step after a log or a save and closed at the next log or save
    # (steps 1, 2, 3, 4, 6): the answers of steps 0 to 4.
    assert {step for step, *_ in resumed} == {0, 1, 2, 3, 4}


@pytest.mark.slow
def test_the_run_settings_at_the_top_describe_the_finished_run(killed_in_rotation):
    base = killed_in_rotation["base"]
    for folder in (base / "run", base / "straight"):
        settings = settings_of(folder)
        assert settings["global_step"] == MAX_STEPS
        assert settings["interactions"]["answers"] == 2 * MAX_STEPS
        assert settings["world_size"] == 1 and settings["save_only_model"] is False


@pytest.mark.slow
def test_a_user_that_hangs_costs_one_timeout_and_its_samples_are_masked_and_counted(straight):
    base = straight
    hung = [r for r in read_jsonl(base / "straight" / TOKEN_LOG_NAME) if f"ID:{HANG_TAG}" in r["prompt"]]
    assert hung and all(r["feedback"] == "" for r in hung)  # masked, never invented
    history = json.loads((base / "straight" / "trainer_state.json").read_text())["log_history"]
    logged = [e for e in history if "user_sim/failed_frac" in e]
    assert any(e["user_sim/failed_frac"] > 0 for e in logged)
    assert all(e["user_sim/seconds"] < USER_TIMEOUT + 10 for e in logged if "user_sim/seconds" in e)
    answered = settings_of(base / "straight")["interactions"]
    assert answered["with_feedback"] < answered["answers"]


@pytest.fixture(scope="module")
def aborted(straight, entry_model_dir):
    """A run whose user stops answering at step 4 (every request fails: more than max_failed_frac), then resumed
    with a user that answers again."""
    base = straight
    abort = run_with_user(base, "abort", "abort", entry_model_dir, fail_from=FAIL_FROM_REQUEST)
    after_abort = {"latest": latest_complete_checkpoint(base / "abort"),
                   "folders": sorted(p.name for p in (base / "abort").glob("checkpoint-*"))}
    resumed = run_with_user(base, "abort", "abort-resumed", entry_model_dir, ["--resume_from_checkpoint", "last"])
    return dict(base=base, abort=abort, after_abort=after_abort, resumed=resumed)


@pytest.mark.slow
def test_an_abort_past_max_failed_frac_saves_a_checkpoint_first_and_says_so_in_one_line(aborted):
    code, log = aborted["abort"]
    checkpoint = aborted["base"] / "abort" / "checkpoint-3"
    assert code == 1, log[-3000:]
    assert "Traceback" not in log
    (error,) = [line for line in log.splitlines() if line.startswith("error: ")]
    assert "2/2 openai user-simulator requests" in error and "max_failed_frac=0.5" in error
    assert f"saved {checkpoint} first" in log
    assert aborted["after_abort"] == {"latest": str(checkpoint), "folders": ["checkpoint-3"]}  # 2 rotated away


@pytest.mark.slow
def test_the_resume_after_an_abort_is_exact(aborted):
    base = aborted["base"]
    code, log = aborted["resumed"]
    assert code == 0, log[-3000:]
    assert f"Resuming from {base / 'abort' / 'checkpoint-3'} (step 3)" in log
    assert trained_steps(base / "abort") == trained_steps(base / "straight")
    # Step 4 is made again from the RNG states it started from: the same answers, the same weights.
    assert token_log_keys(base / "abort") == token_log_keys(base / "straight")
    assert not weights_differ(base / "abort", base / "straight")


@pytest.mark.slow
def test_a_second_sigterm_kills_at_once_even_while_the_main_thread_is_held_in_c(entry_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, PROMPTS)
    flags = common_flags(prompts, tmp_path / "run", tmp_path / "records", entry_model_dir) + [
        "--max_steps", "3", "--per_device_train_batch_size", "2", "--save_strategy", "no", "--block_after_step", "1"]
    log = tmp_path / "run.log"
    process = launch(flags, log)
    try:
        pid = wait_until_ready(tmp_path / "records", process, log)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "SIGTERM received" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "SIGTERM received: stopping after this step" in log.read_text()  # noted at once, though held
        os.kill(pid, signal.SIGTERM)
        code = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert code == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "SIGTERM again: exiting now, without a checkpoint" in log.read_text()
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def in_small_tmpfs(folder: Path, size: str, command: list[str]) -> list[str]:
    """`command` in a private mount namespace where `folder` is a fresh tmpfs of `size`; None without unshare."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        return None
    return [unshare, "-rm", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"', "sh",
            str(folder), *command]


@pytest.mark.slow
def test_a_full_disk_is_named_with_the_folder_the_need_and_the_free_space(entry_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, PROMPTS)
    disk = tmp_path / "disk"
    disk.mkdir()
    flags = common_flags(prompts, disk / "run", tmp_path / "records", entry_model_dir) + [
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--save_steps", "1"]
    command = in_small_tmpfs(disk, "12m", [sys.executable, str(ROOT / "tests" / "sdpo_entry.py"), *flags])
    if command is None:
        pytest.skip("no unshare (user and mount namespaces) to mount a small tmpfs")
    log = tmp_path / "run.log"
    code = finish(start(command, log, cwd=ROOT), log)
    output = log.read_text()
    assert code == 1, output[-3000:]
    assert "Traceback" not in output
    # At the start: two checkpoints of weights and Adam's moments will not fit.
    assert "free, but 2 checkpoint(s) of about" in output and "optimizer state" in output
    (error,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert f"saving {disk / 'run' / 'checkpoint-1'} failed: the disk is full (a checkpoint needs about" in error
    assert " free there; " in error and "resume with --resume_from_checkpoint last" in error


@pytest.fixture(scope="module")
def rank_killed(entry_model_dir, tmp_path_factory):
    """Two processes: one run never interrupted; one whose rank 1 is killed by SIGKILL in the middle of the save of
    step 2 (rank 0 has written its part); its resume with `last` on two processes."""
    base = tmp_path_factory.mktemp("ranks")
    prompts = base / "prompts.jsonl"
    write_prompts(prompts, PROMPTS)
    shared = ["--max_steps", "4", "--per_device_train_batch_size", "1", "--save_steps", "1", "--logging_steps", "3"]

    def two_processes(output, name, extra=()):
        flags = common_flags(prompts, base / output, base / f"{name}-records", entry_model_dir) + shared + list(extra)
        process = launch(flags, base / f"{name}.log", nproc=2)
        started = time.monotonic()
        return finish(process, base / f"{name}.log"), time.monotonic() - started, (base / f"{name}.log").read_text()

    straight = two_processes("straight", "straight")
    assert straight[0] == 0, straight[2][-3000:]
    killed = two_processes("run", "killed", ["--kill_saving_step", "2", "--wait_rank", "1"])
    after_kill = {"latest": latest_complete_checkpoint(base / "run"),
                  "checkpoint-2": sorted(p.name for p in (base / "run" / "checkpoint-2").iterdir())}
    resumed = two_processes("run", "resumed", ["--resume_from_checkpoint", "last"])
    yield dict(base=base, straight=straight, killed=killed, after_kill=after_kill, resumed=resumed)
    drop_weights(base)


@pytest.mark.slow
def test_a_rank_killed_stops_the_others_with_a_message_naming_it(rank_killed):
    code, seconds, log = rank_killed["killed"]
    # Rank 0 fails in the save's last collective ("Connection closed by peer"), unless torchrun's SIGTERM ends it
    # first; either way torchrun's summary names the rank that died first, and how.
    assert code != 0 and seconds < rank_killed["straight"][1] + 60, log[-3000:]
    root_cause = log.split("Root Cause")[-1]
    assert "rank      : 1" in root_cause and "Signal 9 (SIGKILL)" in root_cause
    # Rank 0's own last word is one line that says what happened and what to do, not a socket error's traceback.
    assert "error: process 0 of 2 lost the others in a collective" in log, log[-3000:]
    assert "--resume_from_checkpoint last" in log.split("lost the others")[1].splitlines()[0]
    # Rank 0 had written its part of checkpoint-2, never the mark: without rank 1's RNG state it is not complete.
    written = rank_killed["after_kill"]["checkpoint-2"]
    assert "rng_state_0.pth" in written and "rng_state_1.pth" not in written and RUN_SETTINGS_NAME not in written
    assert rank_killed["after_kill"]["latest"] == str(rank_killed["base"] / "run" / "checkpoint-1")


@pytest.mark.slow
def test_the_resume_after_a_rank_was_killed_is_exact(rank_killed):
    base = rank_killed["base"]
    code, _, log = rank_killed["resumed"]
    assert code == 0, log[-3000:]
    assert f"Resuming from {base / 'run' / 'checkpoint-1'} (step 1)" in log
    assert trained_steps(base / "run") == trained_steps(base / "straight")
    assert token_log_keys(base / "run") == token_log_keys(base / "straight")
    assert not weights_differ(base / "run", base / "straight")
