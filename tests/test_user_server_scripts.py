"""scripts/serve_user_simulator.sh and USER_API_BASE in the training scripts.

No vLLM here: the real-run checks put a stand-in `vllm` on PATH that writes down how it was started and answers
/health on the port it was given, so the script's own work (command, environment, waiting, the printed URL,
stopping the server with itself) is what is tested. The exact vLLM command is checked in dry runs.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from sdpo_interactions.testing.openai_server import free_port
from test_scripts import REPO, SCRIPTS, SCRIPT_VARS, TRAINING, flags, printed_command, run

FAKE_VLLM = f"""#!{sys.executable}
import http.server, json, os, sys
argv = sys.argv[1:]
with open(os.environ["RECORD_TO"], "w") as f:
    json.dump({{"argv": argv, "env": {{k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "VLLM_API_KEY")}}}}, f)
if os.environ.get("FAKE_VLLM_FAIL"):
    sys.exit(3)
healthy = not os.environ.get("FAKE_VLLM_NEVER_HEALTHY")

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" and healthy else 503)
        self.end_headers()
    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(argv[argv.index("--port") + 1])), Health).serve_forever()
"""


@pytest.fixture
def fake_vllm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = bin_dir / "vllm"
    path.write_text(FAKE_VLLM)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "vllm.json"
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD_TO": str(record), "PYTHON": sys.executable}, record


def test_serve_dry_run_is_the_vllm_command_of_the_8_gpu_layout(tmp_path):
    proc = run("serve_user_simulator.sh", "--dry-run", "--", "--seed", "1", env={"USER_API_KEY": "sk-MARKER-9"},
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert printed_command(proc.stdout) == [
        "vllm", "serve", "Qwen/Qwen3-8B", "--served-model-name", "Qwen/Qwen3-8B", "--host", "0.0.0.0",
        "--port", "8000", "--data-parallel-size", "4", "--tensor-parallel-size", "1", "--enable-prefix-caching",
        "--generation-config", "vllm", "--max-model-len", "4096", "--gpu-memory-utilization", "0.90",
        "--seed", "1"]
    assert "export CUDA_VISIBLE_DEVICES=4,5,6,7" in proc.stdout and "USER_API_KEY: set" in proc.stdout
    assert "MARKER" not in proc.stdout + proc.stderr
    assert "vLLM is not installed" in proc.stderr and "requirements-vllm.txt" in proc.stderr  # a warning only


@pytest.mark.parametrize("gpus, tp, replicas", [("0,1,2,3,4,5,6,7", "2", "4"), ("3", "1", "1")])
def test_serve_replicas_are_gpus_over_tensor_parallel(tmp_path, gpus, tp, replicas):
    proc = run("serve_user_simulator.sh", "--dry-run", env={"USER_GPUS": gpus, "USER_TP": tp}, cwd=tmp_path)
    argv = printed_command(proc.stdout)
    assert argv[argv.index("--data-parallel-size") + 1] == replicas
    assert argv[argv.index("--tensor-parallel-size") + 1] == tp


def test_serve_rejects_gpus_that_do_not_split_into_replicas(tmp_path):
    proc = run("serve_user_simulator.sh", "--dry-run", env={"USER_GPUS": "0,1,2", "USER_TP": "2"}, cwd=tmp_path)
    assert proc.returncode == 2 and "not a multiple of USER_TP=2" in proc.stderr


def test_serve_without_vllm_stops_with_the_install_line(tmp_path):
    proc = run("serve_user_simulator.sh", env={"VLLM": str(tmp_path / "no-vllm")}, cwd=tmp_path)
    assert proc.returncode == 1 and "command:" not in proc.stdout
    assert "vLLM is not installed" in proc.stderr and "pip install -r requirements-vllm.txt" in proc.stderr


def test_serve_waits_for_health_prints_the_url_and_stops_its_server(tmp_path, fake_vllm):
    env, record = fake_vllm
    port = str(free_port())
    env = {**{k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}, **env, "PORT": port, "HOST": "127.0.0.1",
           "USER_GPUS": "6,7", "USER_API_MODEL": "user", "USER_API_KEY": "sk-MARKER-2"}
    proc = subprocess.Popen(["bash", str(SCRIPTS / "serve_user_simulator.sh")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 60
    while not any(line.startswith("  USER_API_BASE=") for line in lines) and time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
    assert f"  USER_API_BASE=http://127.0.0.1:{port}/v1 USER_API_MODEL=user\n" in lines
    started = json.loads(record.read_text())
    assert started["env"] == {"CUDA_VISIBLE_DEVICES": "6,7", "VLLM_API_KEY": "sk-MARKER-2"}  # the key by env only
    assert "sk-MARKER-2" not in " ".join(started["argv"]) + "".join(lines)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    with pytest.raises(OSError):  # the script took its server with it
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_serve_reports_a_server_that_dies_before_it_is_healthy(tmp_path, fake_vllm):
    env, _ = fake_vllm
    proc = run("serve_user_simulator.sh", env={**env, "PORT": str(free_port()), "FAKE_VLLM_FAIL": "1"}, cwd=tmp_path)
    assert proc.returncode == 1 and "the server exited (status 3)" in proc.stderr


def test_serve_gives_up_on_a_server_that_never_gets_healthy_and_stops_it(tmp_path, fake_vllm):
    env, _ = fake_vllm
    port = str(free_port())
    proc = run("serve_user_simulator.sh", env={**env, "PORT": port, "HOST": "127.0.0.1", "HEALTH_TIMEOUT": "3",
                                               "FAKE_VLLM_NEVER_HEALTHY": "1"}, cwd=tmp_path)
    assert proc.returncode == 1 and "no answer from http://127.0.0.1:" in proc.stderr and "HEALTH_TIMEOUT=3" in proc.stderr
    import urllib.request

    with pytest.raises(OSError):  # its server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.parametrize("experiment", list(TRAINING))
def test_training_with_user_api_base_uses_the_server_instead(experiment, tmp_path):
    env = {"TRAIN_JSONL": str(REPO / "data/sample/train.jsonl"), "VAL_JSONL": str(REPO / "data/sample/validation.jsonl"),
           "USER_API_BASE": "http://simhost:8000/v1", "USER_API_MODEL": "Qwen/Qwen3-8B", "USER_API_KEY": "sk-MARKER-3"}
    proc = run(TRAINING[experiment]["script"], "--dry-run", env=env, cwd=tmp_path)  # no ANTHROPIC_API_KEY
    assert proc.returncode == 0, proc.stderr
    f = flags(printed_command(proc.stdout))
    assert (f["--user_api_base"], f["--user_api_model"]) == ("http://simhost:8000/v1", "Qwen/Qwen3-8B")
    assert "--user_model_name_or_path" not in f and "--claude_model" not in f
    assert "ANTHROPIC_API_KEY" not in proc.stderr and "USER_API_KEY: set" in proc.stdout
    assert "USER_API_BASE=http://simhost:8000/v1" in proc.stdout and "MARKER" not in proc.stdout + proc.stderr


def test_user_api_model_defaults_to_the_user_model_and_is_required_without_one(tmp_path):
    env = {"TRAIN_JSONL": str(REPO / "data/sample/train.jsonl"), "USER_API_BASE": "http://simhost:8000/v1",
           "USER_MODEL_NAME_OR_PATH": "Qwen/Qwen3-14B"}
    f = flags(printed_command(run("train_online_sdpo_tldr.sh", "--dry-run", env=env, cwd=tmp_path).stdout))
    assert f["--user_api_model"] == "Qwen/Qwen3-14B"
    proc = run("train_online_sdpo.sh", "--dry-run", env={**env, "USER_MODEL_NAME_OR_PATH": ""}, cwd=tmp_path)
    assert proc.returncode == 2 and "USER_API_MODEL is not" in proc.stderr


def pins(path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (REPO / path).read_text().splitlines()]
    return dict(line.split("==") for line in lines if "==" in line)


def test_the_vllm_environment_differs_from_the_pins_only_by_vllm_and_its_torch():
    """TRL 0.24 supports exactly vllm 0.10.2, which needs torch 2.8.0, and torchao 0.13 is the release built for
    torch 2.8 (the recipes' optimizer); everything else must stay the contract."""
    vllm, main = pins("requirements-vllm.txt"), pins("requirements.txt")
    assert (vllm.pop("vllm"), vllm.pop("torch"), vllm.pop("torchao")) == ("0.10.2", "2.8.0", "0.13.0")
    main.pop("torch"), main.pop("torchao")
    assert vllm == main
