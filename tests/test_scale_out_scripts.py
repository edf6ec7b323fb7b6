"""The scale-out options of the training scripts, in dry runs: the accelerate configs (DDP, ZeRO-2/3, FSDP),
several machines, vLLM generation (colocate and server), and the policy's vLLM server script. What needs GPUs or
several machines cannot run here; these tests pin the exact commands that would."""

import pytest
import yaml
from test_scripts import REPO, TRAIN_PY, TRAINING, WITH_PACKAGE, flags, printed_command, run
from trl import TrlParser

import sdpo_interactions.cli.train as train

CONFIGS = {"ddp": ("multigpu_accelerate_config.yaml", "MULTI_GPU"),
           "zero2": ("deepspeed_zero2_accelerate_config.yaml", "DEEPSPEED"),
           "zero3": ("deepspeed_zero3_accelerate_config.yaml", "DEEPSPEED"),
           "fsdp": ("fsdp_accelerate_config.yaml", "FSDP")}
DATA = {"TRAIN_JSONL": str(REPO / "data/sample/train.jsonl"), "VAL_JSONL": str(REPO / "data/sample/validation.jsonl")}


def dry(script, env, tmp_path):
    proc = run(script, "--dry-run", env={**DATA, **env}, cwd=tmp_path)
    return proc, (printed_command(proc.stdout) if proc.returncode == 0 else None)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_accelerate_config_by_name(name, tmp_path):
    filename, distributed_type = CONFIGS[name]
    config = yaml.safe_load((REPO / filename).read_text())
    assert config["distributed_type"] == distributed_type and config["mixed_precision"] == "bf16"
    _, argv = dry("train_online_sdpo_tldr.sh", {"ACCELERATE_CONFIG": name, "WORLD_SIZE": "8"}, tmp_path)
    assert argv[:7] == ["accelerate", "launch", "--config_file", str(REPO / filename), "--num_processes", "8", TRAIN_PY]


def test_the_sharded_configs_save_whole_weights_for_evaluation():
    zero3 = yaml.safe_load((REPO / CONFIGS["zero3"][0]).read_text())["deepspeed_config"]
    fsdp = yaml.safe_load((REPO / CONFIGS["fsdp"][0]).read_text())["fsdp_config"]
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT" and fsdp["fsdp_version"] == 2
    # transformers refuses FSDP activation checkpointing next to the recipes' gradient_checkpointing
    assert fsdp["fsdp_activation_checkpointing"] is False


def test_unknown_config_name_is_a_missing_file(tmp_path):
    proc = run("train_online_sdpo_tldr.sh", env={**DATA, "ACCELERATE_CONFIG": "zero4"}, cwd=tmp_path)
    assert proc.returncode == 1 and "ACCELERATE_CONFIG: no such file: zero4 (ddp, zero2, zero3, fsdp" in proc.stderr


@pytest.mark.parametrize("experiment", list(TRAINING) + ["offline"])
def test_several_machines_pass_their_rank_and_the_main_address(experiment, tmp_path):
    script = TRAINING[experiment]["script"] if experiment != "offline" else "train_offline_sdpo.sh"
    env = {"NUM_MACHINES": "2", "MACHINE_RANK": "1", "MAIN_PROCESS_IP": "10.0.0.1", "WORLD_SIZE": "16",
           "ACCELERATE_CONFIG": "zero3", "RUN_ID": "shared-run", "ANTHROPIC_API_KEY": "k", **WITH_PACKAGE}
    proc, argv = dry(script, env, tmp_path)
    assert argv[:15] == ["accelerate", "launch", "--config_file", str(REPO / CONFIGS["zero3"][0]), "--num_processes",
                         "16", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
                         "--main_process_port", "29500", argv[14]]
    assert argv[14].endswith((".py"))
    for line in ("NUM_MACHINES=2", "MACHINE_RANK=1", "MAIN_PROCESS_IP=10.0.0.1", "MAIN_PROCESS_PORT=29500"):
        assert f"  {line}\n" in proc.stdout
    assert flags(argv)["--output_dir"].endswith("/shared-run")
    assert " x 16 processes, " in proc.stdout  # the schedule counts the processes of every machine


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NUM_MACHINES": "2", "RUN_ID": "r"}, "needs MAIN_PROCESS_IP"),
        ({"NUM_MACHINES": "2", "MAIN_PROCESS_IP": "h", "RUN_ID": "r", "WORLD_SIZE": "5"}, "not a multiple of NUM_MACHINES"),
        ({"NUM_MACHINES": "2", "MAIN_PROCESS_IP": "h", "RUN_ID": "r", "MACHINE_RANK": "2"}, "MACHINE_RANK must be 0 to 1"),
        ({"NUM_MACHINES": "2", "MAIN_PROCESS_IP": "h"}, "set RUN_ID (or OUTPUT_DIR) to the same value on every machine"),
        ({"NUM_MACHINES": "2", "MAIN_PROCESS_IP": "h", "RUN_ID": "r", "WORLD_SIZE": "1"}, "needs WORLD_SIZE > 1"),
        ({"USE_VLLM": "yes"}, "USE_VLLM must be colocate or server"),
        ({"USE_VLLM": "server"}, "needs VLLM_SERVER_URL"),
        ({"USE_VLLM": "colocate", "VLLM_TP": "3"}, "not a multiple of VLLM_TP=3"),
    ],
)
def test_bad_launch_settings_are_usage_errors(env, message, tmp_path):
    proc, _ = dry("train_online_sdpo_tldr.sh", env, tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "command:" not in proc.stdout


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_use_vllm_passes_trls_flags_and_they_parse(mode, tmp_path):
    env = {"USE_VLLM": mode, "VLLM_SERVER_URL": "http://gen-node:8001", "VLLM_TP": "2"}
    proc, argv = dry("train_online_sdpo_tldr.sh", env, tmp_path)
    f = flags(argv)
    assert (f["--use_vllm"], f["--vllm_mode"]) == ("true", mode)
    if mode == "colocate":
        assert (f["--vllm_gpu_memory_utilization"], f["--vllm_tensor_parallel_size"]) == ("0.3", "2")
    else:
        assert f["--vllm_server_base_url"] == "http://gen-node:8001" and "--vllm_tensor_parallel_size" not in f
    assert f"  USE_VLLM={mode}\n" in proc.stdout
    program = argv.index(TRAIN_PY)
    _, config, _ = TrlParser(train.ARGUMENTS).parse_args_and_config(args=argv[program + 1:] + ["--use_cpu", "true"])
    assert config.use_vllm and config.vllm_mode == mode and config.temperature == 1.0  # the recipe's sampling


def test_offline_refuses_use_vllm(tmp_path):
    proc = run("train_offline_sdpo.sh", "--dry-run", env={"USE_VLLM": "colocate"}, cwd=tmp_path)
    assert proc.returncode == 2 and "offline SDPO generates nothing" in proc.stderr


def test_policy_vllm_server_dry_run(tmp_path):
    env = {"MODEL_NAME_OR_PATH": "Qwen/Qwen3-14B", "VLLM_GPUS": "6,7", "VLLM_TP": "2", "PORT": "8011"}
    proc = run("serve_policy_vllm.sh", "--dry-run", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert printed_command(proc.stdout) == [
        "trl", "vllm-serve", "--model", "Qwen/Qwen3-14B", "--tensor_parallel_size", "2", "--data_parallel_size", "1",
        "--host", "0.0.0.0", "--port", "8011", "--max_model_len", "4608", "--gpu_memory_utilization", "0.90",
        "--enable_prefix_caching", "true"]
    assert "export CUDA_VISIBLE_DEVICES=6,7" in proc.stdout
    assert "vLLM is not installed" in proc.stderr  # a warning in a dry run; a real run stops there
    proc = run("serve_policy_vllm.sh", env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "pip install -r requirements-vllm.txt" in proc.stderr


def test_trl_vllm_serve_takes_every_flag_the_script_passes(tmp_path):
    """The script's flags are fields of TRL 0.24's own `trl vllm-serve` arguments (vLLM itself is not needed)."""
    from trl.scripts.vllm_serve import ScriptArguments

    proc = run("serve_policy_vllm.sh", "--dry-run", cwd=tmp_path)
    args = TrlParser((ScriptArguments,)).parse_args_and_config(args=printed_command(proc.stdout)[2:])[0]
    assert (args.model, args.data_parallel_size, args.enable_prefix_caching) == ("Qwen/Qwen3-8B", 4, True)
