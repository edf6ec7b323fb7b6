"""scripts/serve_live_sdpo.sh and the serve_live command line before anything loads: the dry run prints the
settings, the URLs and the exact command (keys only as set / not set), variables become flags, a real run without
its keys stops in the script, and the Python command line refuses bad input in one line with status 2."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_interactions.testing.runs import subprocess_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "serve_live_sdpo.sh"
KEYS = {"LIVE_API_KEY": "chat-MARKER-0123456789abcdef", "LIVE_ADMIN_KEY": "admin-MARKER-0123456789abcdef"}


def run(*args, env=None, script=SCRIPT) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in subprocess_env().items() if k not in KEYS}
    return subprocess.run(["bash", str(script), *args], env={**environ, **(env or {})}, capture_output=True,
                          text=True, timeout=120)


def test_the_dry_run_prints_urls_and_the_command_with_every_variable(tmp_path):
    env = {**KEYS, "HOST": "0.0.0.0", "PORT": "9123", "PER_USER_ADAPTERS": "true", "SAMPLES_PER_UPDATE": "2",
           "LR": "2e-5", "DATA_DIR": str(tmp_path / "live"), "ADAPTER_PATH": str(tmp_path)}
    proc = run("--dry-run", "--", "--distillation_mode", "topk_logits", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "LIVE_API_KEY: set" in out and "LIVE_ADMIN_KEY: set" in out
    assert KEYS["LIVE_API_KEY"] not in out + proc.stderr and KEYS["LIVE_ADMIN_KEY"] not in out + proc.stderr
    assert ":9123/" in out and ":9123/v1" in out and "0.0.0.0:9123" not in out  # a reachable name, not 0.0.0.0
    command = shlex.split(out.split("command:\n")[1].splitlines()[0])
    assert command[1:3] == ["-m", "sdpo_interactions.cli.serve_live"]
    flags = dict(zip(command[3::2], command[4::2]))
    assert flags["--port"] == "9123" and flags["--per_user_adapters"] == "true" and flags["--learning_rate"] == "2e-5"
    assert flags["--samples_per_update"] == "2" and flags["--adapter_path"] == str(tmp_path)
    assert flags["--distillation_mode"] == "topk_logits" and "dry run: nothing was executed" in out


def test_a_real_run_without_its_keys_stops_in_the_script_and_a_bad_variable_is_named():
    proc = run(env={"PYTHON": "/bin/false"})
    assert proc.returncode == 1 and "LIVE_API_KEY is not set" in proc.stderr and "command:" not in proc.stdout
    proc = run("--dry-run", env={"PER_USER_ADAPTERS": "yes"})
    assert proc.returncode == 2 and "PER_USER_ADAPTERS must be true or false" in proc.stderr
    assert run("-h").stdout.startswith("usage:")


@pytest.mark.slow  # three Python processes that import the model stack (about 20 s each on two shared cores)
def test_the_command_line_refuses_bad_input_in_one_line_before_loading_a_model(tmp_path):
    base = [sys.executable, "-m", "sdpo_interactions.cli.serve_live", "--data_dir", str(tmp_path)]
    environ = {k: v for k, v in subprocess_env().items() if k not in KEYS}
    keys = subprocess.run([*base, "--model_name_or_path", "no-such-model"], env=environ, capture_output=True,
                          text=True, timeout=300)
    assert keys.returncode == 2 and keys.stderr.strip().splitlines()[-1].startswith("error: LIVE_API_KEY is not set")
    options = subprocess.run([*base, "--model_name_or_path", "m", "--samples_per_update", "0", "--top_p", "2"],
                             env={**environ, **KEYS}, capture_output=True, text=True, timeout=300)
    last = options.stderr.strip().splitlines()[-1]
    assert options.returncode == 2 and "samples_per_update" in last and "top_p" in last
    assert "Traceback" not in options.stderr
    export = subprocess.run([*base, "--export_to", str(tmp_path / "out.jsonl")], env=environ, capture_output=True,
                            text=True, timeout=300)
    assert export.returncode == 2 and "no live store" in export.stderr
