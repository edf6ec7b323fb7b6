"""What a user sees while a run trains (issue 21): no false alarm from gradient checkpointing, metrics for the first
and the last step whatever logging_steps says, and a readable one-line step summary."""

import warnings

import pytest
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fakes import SameReplyUser
from sdpo_interactions import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.core.callbacks import step_summary
from sdpo_interactions.precision import METRIC_NAME, UpdatePrecisionCallback
from sdpo_interactions.prompts import prompt_messages

CHECKPOINT_ALARM = "None of the inputs have requires_grad=True"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, model_dir):
    """A two-layer random Llama on the embedded tokenizer: this file tests plumbing, not learning."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run(tiny_model, tmp_path, **overrides) -> tuple[OnlineSDPOTrainer, list[str]]:
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3, logging_steps=10,
                    max_completion_length=4, learning_rate=1e-3, save_strategy="no", report_to=[], bf16=False,
                    use_cpu=True, specificity_samples=0, token_log_samples=0, gradient_checkpointing=True)
    settings.update(overrides)
    dataset = Dataset.from_list([{"prompt": prompt_messages(f"Question {i}?", "")} for i in range(6)])
    trainer = OnlineSDPOTrainer(model=tiny_model, user_simulator=SameReplyUser(), args=OnlineSDPOConfig(**settings),
                                train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(tiny_model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return trainer, [str(w.message) for w in caught]


def test_a_short_run_logs_its_first_and_last_step_and_checkpointing_raises_no_alarm(tiny_model, tmp_path):
    trainer, caught = run(tiny_model, tmp_path)
    logged = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [1, 3]  # logging_steps=10 would have logged nothing in three steps
    assert all(entry["grad_norm"] > 0 for entry in trainer.state.log_history if "loss" in entry)
    assert trainer.args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert not [m for m in caught if CHECKPOINT_ALARM in m]
    # The precision check and its metric come with every SDPO trainer (issue 20), first in the callback line.
    assert isinstance(trainer.callback_handler.callbacks[0], UpdatePrecisionCallback)
    assert all(METRIC_NAME in entry for entry in trainer.state.log_history if "loss" in entry)


def test_the_alarm_came_from_reentrant_checkpointing_in_the_no_grad_teacher_pass(tiny_model, tmp_path):
    """The cause, shown: ask for TRL's reentrant default and the warning is back."""
    _, caught = run(tiny_model, tmp_path, max_steps=1, gradient_checkpointing_kwargs={"use_reentrant": True})
    assert [m for m in caught if CHECKPOINT_ALARM in m]


def test_step_summary_reads_as_one_line():
    logs = {"loss": 0.01234, "sdpo/signal_mean": -0.05, "sdpo/signal_abs_mean": 0.3, "user_sim/seconds": 12.34,
            "learning_rate": 5e-6, "grad_norm": 1.5, "sdpo/feedback_specificity": 0.1, "epoch": 0.5}
    assert step_summary(3, 10, logs, 15.2) == (
        "step 3/10 | loss 0.0123 | signal -0.0500 | |signal| 0.3000 | specificity +0.1000 | user 12.3 s | "
        "grad 1.5 | lr 5.00e-06 | step 15.2 s"
    )
    assert step_summary(1, 2, {"loss": 1.0}, None) == "step 1/2 | loss 1.0000"
