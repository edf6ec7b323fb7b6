"""Whether an optimizer step's update reaches the weights: the rounding by hand, the start-up check, and a few real
steps of each precision setup that runs on the CPU, with the applied/computed ratio recomputed from the weights before
and after against an fp32 AdamW fed the same gradients."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

from sdpo_interactions.precision import (
    METRIC_NAME,
    applied_fraction,
    applied_ratio,
    check_update_precision,
    compensation,
    optimizer_cls_and_kwargs,
    parse_optim_args,
    sample_positions,
)

REPO = Path(__file__).resolve().parents[1]
SR = {"optim": "adamw_torch_8bit", "optim_args": "bf16_stochastic_round=true"}


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(tmp_path, **fields) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **fields)


# ---------------------------------------------------------------------------------------------------------------
# By hand
# ---------------------------------------------------------------------------------------------------------------


def test_applied_fraction_by_hand():
    # bf16 spacing at 1.0 is 2^-7 = 0.0078125: 0.005 rounds up to a whole spacing, 0.003 rounds away.
    ones = torch.ones(4, dtype=torch.bfloat16)
    assert applied_fraction(ones, 0.005) == pytest.approx(0.0078125 / 0.005)
    assert applied_fraction(ones, 0.003) == 0.0
    # At 0 everything lands (to bf16's 3 digits); a half-and-half mix keeps about half.
    mixed = torch.tensor([1.0, 0.0], dtype=torch.bfloat16)
    assert applied_fraction(mixed, 0.003) == pytest.approx(0.5, rel=1e-2)
    # fp32 at a typical weight size keeps 2e-6 to within its ~1000 spacings.
    assert applied_fraction(torch.full((4,), 0.02), 2e-6) == pytest.approx(1.0, abs=1e-3)


def test_applied_ratio_projects_on_the_computed_change():
    assert applied_ratio(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == (1.0, 2.0)
    # A change against the computed one counts negative.
    assert applied_ratio(torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 1.0])) == (0.0, 2.0)


def test_sample_positions_are_uniform_over_all_elements():
    small, large = sample_positions([10, 990], 20000, seed=0)
    assert 100 < len(small) < 300 and len(small) + len(large) == 20000
    assert small.max() < 10 and large.max() < 990 and large.min() >= 0
    assert torch.equal(large, large.sort().values)
    again = zip(sample_positions([10, 990], 50, seed=1), sample_positions([10, 990], 50, seed=1))
    assert all(torch.equal(a, b) for a, b in again)


def test_optim_args():
    assert parse_optim_args("bf16_stochastic_round=True, kahan_sum=false") == {
        "bf16_stochastic_round": "true", "kahan_sum": "false"}
    assert parse_optim_args(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_optim_args("bf16_stochastic_round")


def test_the_stochastic_rounding_optimizer(tmp_path, caplog):
    optimizer_cls, kwargs = optimizer_cls_and_kwargs(args(tmp_path, learning_rate=2e-6, **SR))
    assert optimizer_cls.__name__ == "AdamW8bit" and kwargs["bf16_stochastic_round"] is True and kwargs["lr"] == 2e-6
    assert optimizer_cls_and_kwargs(args(tmp_path, optim="adamw_torch_8bit")) is None
    # A command-line optim over the recipe's optim_args: transformers' own optimizer, and a warning.
    assert optimizer_cls_and_kwargs(args(tmp_path, optim="adamw_torch", optim_args="bf16_stochastic_round=true")) is None
    assert "bf16_stochastic_round is ignored: only optim adamw_torch_8bit or adamw_torch_4bit" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# The start-up check on the embedded model's weights
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)


def test_the_warning_fires_for_plain_bf16_at_the_recipes_rates(bf16_model, tmp_path):
    message = check_update_precision(bf16_model, args(tmp_path, learning_rate=2e-6, optim="adamw_bnb_8bit"))
    assert message and "torch.bfloat16" in message and "optim=adamw_bnb_8bit" in message
    lost = int(message.split("so about ")[1].split("%")[0])
    assert 97 <= lost <= 100, message  # the measurement: 0.57% of the weights move at 2e-6
    at_5e6 = check_update_precision(bf16_model, args(tmp_path, learning_rate=5e-6, optim="adamw_torch"))
    assert at_5e6 and "bf16_stochastic_round=true" in at_5e6
    # With the Trainer's optimizer at hand it is what counts: plain torch AdamW compensates nothing.
    plain = torch.optim.AdamW(bf16_model.parameters(), lr=2e-6)
    assert check_update_precision(bf16_model, args(tmp_path, learning_rate=2e-6, **SR), plain)


def test_the_warning_stays_quiet_when_something_compensates(bf16_model, model_dir, tmp_path, monkeypatch):
    assert check_update_precision(bf16_model, args(tmp_path, learning_rate=2e-6, **SR)) is None
    assert check_update_precision(bf16_model, args(tmp_path, learning_rate=2e-6, optim="stable_adamw")) is None
    cls, kwargs = optimizer_cls_and_kwargs(args(tmp_path, learning_rate=2e-6, **SR))
    built = cls(bf16_model.parameters(), **kwargs)
    torchao_args = args(tmp_path, learning_rate=2e-6, optim="adamw_torch_8bit")
    assert check_update_precision(bf16_model, torchao_args, built) is None
    # A large enough step lands on bf16 weights; fp32 weights keep any step.
    assert check_update_precision(bf16_model, args(tmp_path, learning_rate=1e-2, optim="adamw_torch")) is None
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert check_update_precision(fp32, args(tmp_path, learning_rate=2e-6, optim="adamw_torch")) is None
    # An accelerate config with DeepSpeed (accelerate launch exports the variable; parsing it needs deepspeed).
    plain = args(tmp_path, learning_rate=2e-6, optim="adamw_bnb_8bit")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert "DeepSpeed" in compensation(plain) and check_update_precision(bf16_model, plain) is None


# ---------------------------------------------------------------------------------------------------------------
# A few real steps per setup
# ---------------------------------------------------------------------------------------------------------------


class GradRecorder(TrainerCallback):
    """The clipped gradients each optimizer step used, in fp32."""

    def __init__(self):
        self.steps: list[list[torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append([p.grad.float().clone() for p in model.parameters() if p.requires_grad])


def reference_ratio(trainable, before, recorder: GradRecorder, lr: float) -> float:
    """<applied, computed> / <computed, computed> over every trained weight, the computed change being torch's fp32
    AdamW stepped with the recorded gradients from the weights before."""
    copies = [b.float().clone().requires_grad_() for b in before]
    optimizer = torch.optim.AdamW(copies, lr=lr, weight_decay=0.0)
    for grads in recorder.steps:
        for copy, grad in zip(copies, grads):
            copy.grad = grad
        optimizer.step()
    sums = [applied_ratio(p.detach().float() - b.float(), c.detach() - b.float())
            for p, b, c in zip(trainable, before, copies)]
    return sum(s[0] for s in sums) / sum(s[1] for s in sums)


@pytest.mark.parametrize(
    "setup, lr, low, high",
    [
        ("bf16_adamw", 2e-6, 0.001, 0.05),  # plain bf16 AdamW: about 0.01
        ("today", 2e-6, 0.001, 0.05),  # the old recipes (bf16, bitsandbytes 8-bit)
        # torchao's optimizers compile their step on first use (about a minute on a fresh machine): second tier.
        pytest.param("default", 2e-6, 0.95, 1.05, marks=pytest.mark.slow),  # the recipes now: stochastic rounding
        pytest.param("fp32_master_torchao8", 2e-6, 0.95, 1.05, marks=pytest.mark.slow),  # fp32 master (FSDP upcast)
        pytest.param("lora", 2e-6, 0.95, 1.05, marks=pytest.mark.slow),  # fp32 adapters over bf16 weights
    ],
)
def test_applied_over_computed_from_the_weights(setup, lr, low, high, model_dir):
    bench = load_bench("bench_precision")
    recorder = GradRecorder()
    # One trained layer, 3 steps of 16 tokens: the embedded model's real weights, at a CPU test's cost.
    trainer, trainable, before = bench.train(setup, lr, model_path=model_dir, steps=3, tokens=16, train_layers=1,
                                             callbacks=[recorder])
    assert len(recorder.steps) == 3
    ratio = reference_ratio(trainable, before, recorder, lr)
    assert low <= ratio <= high, (setup, ratio)
    # The cheap metric on its sample agrees with the full computation.
    logged = [e[METRIC_NAME] for e in trainer.state.log_history if METRIC_NAME in e]
    assert len(logged) == 1 and logged[0] == pytest.approx(ratio, abs=0.03), (logged, ratio)


# ---------------------------------------------------------------------------------------------------------------
# What each launch path trains in, as the dry runs print it
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "launch, extra, shown, kept",
    [
        ({"WORLD_SIZE": "1"}, [], "launch one process", "stochastic rounding (torchao)"),
        ({"ACCELERATE_CONFIG": "ddp"}, [], "launch MULTI_GPU (mixed_precision bf16)", "stochastic rounding (torchao)"),
        ({"ACCELERATE_CONFIG": "zero2"}, [], "launch DEEPSPEED (mixed_precision bf16)", "fp32 master weights in DeepSpeed"),
        ({"ACCELERATE_CONFIG": "zero3"}, [], "launch DEEPSPEED (mixed_precision bf16)", "fp32 master weights in DeepSpeed"),
        ({"ACCELERATE_CONFIG": "fsdp"}, [], "launch FSDP (mixed_precision bf16)", "accelerate upcasts the trainable"),
        ({"WORLD_SIZE": "1"}, ["--use_peft", "true"], "launch one process", "LoRA adapters, which PEFT keeps in fp32"),
        ({"WORLD_SIZE": "1"}, ["--optim", "adamw_bnb_8bit", "--optim_args", ""], "optim adamw_bnb_8bit,",
         "nothing: steps under |w|/512 round away"),
        ({"WORLD_SIZE": "1"}, ["--dtype", "float32", "--bf16", "false"], "weights float32", "float32 weights"),
        # Read as the run reads them: TRL's booleans, --name=value, and model_init_kwargs replacing the recipe's.
        ({"WORLD_SIZE": "1"}, ["--use_peft", "false"], "weights bfloat16", "stochastic rounding (torchao)"),
        ({"WORLD_SIZE": "1"}, ["--use_peft"], "weights bfloat16", "LoRA adapters"),
        ({"WORLD_SIZE": "1"}, ["--model_init_kwargs", '{"dtype": "float32"}'], "weights float32", "float32 weights"),
        ({"WORLD_SIZE": "1"}, ["--optim=adamw_torch"], "optim adamw_torch (", "nothing: steps under |w|/512"),
    ],
)
def test_dry_runs_show_the_precision_of_each_launch_path(launch, extra, shown, kept, tmp_path):
    env = {**os.environ, "TRAIN_JSONL": str(REPO / "data/sample/conversations.jsonl"), "OUTPUT_DIR": str(tmp_path),
           "PYTHON": sys.executable, **launch}
    proc = subprocess.run(["bash", str(REPO / "scripts/train_offline_sdpo.sh"), "--dry-run", "--", *extra], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line, keeper = proc.stdout.split("precision: ", 1)[1].splitlines()[:2]
    assert shown in line and kept in keeper, proc.stdout


def test_the_recipes_parse_on_a_cpu_with_bf16_off(caplog):
    """Issue 21: the recipes no longer force bf16, so on a machine without a GPU the config turns it off (logged)
    instead of TrainingArguments refusing it; the optimizer settings stay the recipe's."""
    from trl import TrlParser

    import sdpo_interactions.cli.train_offline as train_offline

    assert not torch.cuda.is_available()
    argv = ["--config", str(REPO / "recipes/offline.yaml"), "--train_jsonl", str(REPO / "data/sample/conversations.jsonl"),
            "--output_dir", "unused"]
    with caplog.at_level("INFO"):
        _, training_args, _ = TrlParser(train_offline.ARGUMENTS).parse_args_and_config(args=argv)
    assert training_args.bf16 is False and "No GPU: bf16 is off" in caplog.text
    assert optimizer_cls_and_kwargs(training_args)[1]["bf16_stochastic_round"] is True


# ---------------------------------------------------------------------------------------------------------------
# The callback's plumbing, on a tiny random model (its job here is logging, not the real weights' sizes)
# ---------------------------------------------------------------------------------------------------------------


def tiny_trainer(tmp_path, dtype, **fields):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config).to(dtype)
    rows = [{"input_ids": list(range(i, i + 8)), "labels": list(range(i, i + 8))} for i in range(4)]
    training = args(tmp_path, max_steps=3, per_device_train_batch_size=1, logging_steps=1, save_strategy="no",
                    lr_scheduler_type="constant", **fields)
    return Trainer(model=model, args=training, train_dataset=Dataset.from_list(rows))


def test_the_callback_warns_logs_every_logging_step_and_comes_first(tmp_path, caplog):
    from sdpo_interactions.precision import install_precision

    trainer = tiny_trainer(tmp_path, torch.bfloat16, learning_rate=2e-6, optim="adamw_torch")
    callback = install_precision(trainer)
    assert trainer.callback_handler.callbacks[0] is callback
    with caplog.at_level("WARNING", logger="sdpo_interactions.precision"):
        trainer.train()
    assert "nothing compensates (optim=adamw_torch)" in caplog.text
    logged = [e[METRIC_NAME] for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3 and all(0 <= value < 0.2 for value in logged), logged


def test_the_callback_measures_only_adam_and_keeps_quiet_for_fp32(tmp_path, caplog):
    from sdpo_interactions.precision import install_precision

    sgd = tiny_trainer(tmp_path / "sgd", torch.float32, learning_rate=2e-6, optim="sgd")
    install_precision(sgd)
    with caplog.at_level("INFO", logger="sdpo_interactions.precision"):
        sgd.train()
    assert "update_applied_ratio is not measured: SGD is not an Adam optimizer" in caplog.text
    assert not any(METRIC_NAME in e for e in sgd.state.log_history)
    caplog.clear()
    fp32 = tiny_trainer(tmp_path / "fp32", torch.float32, learning_rate=2e-6, optim="adamw_torch")
    install_precision(fp32)
    with caplog.at_level("WARNING", logger="sdpo_interactions.precision"):
        fp32.train()
    assert caplog.text == ""
    assert [round(e[METRIC_NAME], 3) for e in fp32.state.log_history if "loss" in e] == [1.0, 1.0, 1.0]
