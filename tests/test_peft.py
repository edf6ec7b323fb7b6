"""LoRA through TRL's own ModelConfig flags (--use_peft, --lora_r, ...), online and offline, on the tiny random model
(tests/conftest.py; SmolLM2's Llama layers, so the same target modules): adapter checkpoints, a bit-exact resume,
and the evaluation of adapter checkpoints like full ones."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_offline import offline_flags
from trl import TrlParser

import sdpo_interactions.cli.evaluate as evaluate
import sdpo_interactions.cli.train as train
import sdpo_interactions.cli.train_offline as train_offline
from sdpo_interactions.cli.evaluate import EvalArguments
from sdpo_interactions.evaluation.generation import ChatModel
from sdpo_interactions.run_files import RUN_SETTINGS_NAME

from fakes import CannedUser

LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
        "--lora_target_modules", "q_proj", "v_proj"]
REQUESTS = ["Summarise: my neighbour mows his lawn at 6am every Sunday.", "Summarise: I lost my keys twice this week."]


def online(model_dir, output_dir, *extra):
    data = output_dir.parent / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in REQUESTS))
    flags = ["--train_jsonl", str(data), "--model_name_or_path", model_dir, "--output_dir", str(output_dir), *LORA,
             "--per_device_train_batch_size", "2", "--max_steps", "2", "--save_steps", "1", "--learning_rate", "1e-2",
             "--max_completion_length", "6", "--logging_steps", "1", "--report_to", "none", "--bf16", "false",
             "--gradient_checkpointing", "false", "--seed", "3", "--token_log_samples", "0", *extra]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "build_user_simulator", lambda args, kwargs: CannedUser())
        train.main(*TrlParser(train.ARGUMENTS).parse_args_and_config(flags))


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    online(tiny_model_dir, out)
    return out


def test_flags_become_a_lora_config_and_keep_the_recipes_dtype(tmp_path):
    from sdpo_interactions.arguments import policy_init

    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    script, config, model_args = TrlParser(train.ARGUMENTS).parse_args_and_config(
        ["--train_jsonl", str(data), "--output_dir", str(tmp_path), "--bf16", "false",
         "--model_init_kwargs", '{"dtype": "bfloat16"}', *LORA, "--attn_implementation", "sdpa"])
    peft_config = policy_init(model_args, config)
    assert (peft_config.r, peft_config.lora_alpha, set(peft_config.target_modules)) == (4, 8, {"q_proj", "v_proj"})
    assert config.model_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "sdpa"}
    *_, plain = TrlParser(train.ARGUMENTS).parse_args_and_config(
        ["--train_jsonl", str(data), "--output_dir", str(tmp_path), "--bf16", "false"])
    assert policy_init(plain, config) is None and plain.model_name_or_path == "Qwen/Qwen3-8B"


def test_adapter_checkpoints_hold_only_the_adapter(adapter_run, tiny_model_dir):
    for step in (1, 2):
        folder = adapter_run / f"checkpoint-{step}"
        assert (folder / "adapter_model.safetensors").is_file() and (folder / RUN_SETTINGS_NAME).is_file()
        assert not (folder / "model.safetensors").exists()
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir
    first = load_file(adapter_run / "checkpoint-1" / "adapter_model.safetensors")
    second = load_file(adapter_run / "checkpoint-2" / "adapter_model.safetensors")
    assert all("lora_" in name for name in second)
    assert any(not torch.equal(first[n], second[n]) for n in second if "lora_B" in n)  # the adapter learned


def test_a_resumed_adapter_run_ends_where_the_uninterrupted_one_did(adapter_run, tiny_model_dir, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(adapter_run / "checkpoint-1", resumed / "checkpoint-1")
    online(tiny_model_dir, resumed, "--resume_from_checkpoint", "last")
    expected = load_file(adapter_run / "checkpoint-2" / "adapter_model.safetensors")
    got = load_file(resumed / "checkpoint-2" / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    state = json.loads((resumed / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_adapter_checkpoints_are_evaluated_and_plotted_like_full_ones(adapter_run, tiny_model_dir, tmp_path):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"prompt": "Summarise: the bus was late again today."}) + "\n")
    out = tmp_path / "eval"
    rows = evaluate.evaluate(EvalArguments(
        run_dir=str(adapter_run), data_path=str(held_out), eval_n=1, baseline=tiny_model_dir, judge="local",
        judge_model=tiny_model_dir, judge_max_new_tokens=2, output_dir=str(out), oracle=False))
    assert [row["step"] for row in rows] == [1, 2]
    assert (out / "win_rate.png").stat().st_size > 0 and (out / "win_rates.md").is_file()
    policies = {json.loads(line)["checkpoint"] for line in (out / "judgments.jsonl").read_text().splitlines()}
    assert policies == {"checkpoint-1", "checkpoint-2"}
    # What the evaluation loads from an adapter folder is the base model with the trained adapter on it.
    loaded = ChatModel(str(adapter_run / "checkpoint-2")).model
    trained = load_file(adapter_run / "checkpoint-2" / "adapter_model.safetensors")
    lora = {name: p for name, p in loaded.named_parameters() if "lora_B" in name}
    assert len(lora) == sum("lora_B" in name for name in trained) > 0
    assert any(p.abs().sum() > 0 for p in lora.values())  # lora_B starts at zero: these are the trained values


def test_offline_lora_run(tiny_model_dir, tmp_path):
    args = TrlParser(train_offline.ARGUMENTS).parse_args_and_config(
        offline_flags(tiny_model_dir, tmp_path / "run", *LORA, "--max_steps", "1", "--save_strategy", "no"))
    train_offline.main(*args)
    weights = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)
