"""Every loss type and every objective (distillation_mode) gives a step the same gradient however the step is split
into micro-batches, and answers the user did not reply to neither contribute nor dilute the others. Checked through
transformers' own `training_step` (which divides each micro-batch loss by the gradient-accumulation steps) on a
tiny random model: the weighting is arithmetic, which any model exercises."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl.trainer.utils import split_tensor_dict

from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages
from sdpo_interactions.core.trainer import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.users.base import UserSimulator

REQUESTS = [
    "My landlord wants to raise the rent by 30 percent next month. Is that even legal?",
    "I ran my first marathon yesterday and my legs feel like wood. How do I recover?",
    "My cat knocks every glass off the table at 3am. How can I make her stop?",
    "Our team lead takes credit for my work in every meeting. Should I talk to HR?",
]
SILENT = REQUESTS[1]


class SometimesSilentUser(UserSimulator):
    style = "concise_casual_beginner"

    def generate_feedback(self, prompts, completions):
        return ["" if p == SILENT else f"Too long, I wanted two lines about {p[:20]}." for p in prompts]


def make_trainer(model_dir, output_dir, loss_type, batch_size, accumulation, mode="sampled_token"):
    config = OnlineSDPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        max_completion_length=10, loss_type=loss_type, report_to=[], bf16=False, seed=3, token_log_samples=0,
        distillation_mode=mode, distillation_topk=8,
        generation_kwargs={"min_new_tokens": 10},  # full-length answers, cut below to lengths of our choosing
    )
    data = Dataset.from_list([{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS])
    trainer = OnlineSDPOTrainer(
        model=model_dir, user_simulator=SometimesSilentUser(), args=config, train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer._prepare_inputs = lambda inputs: inputs  # feed the batches made below straight to training_step
    trainer.current_gradient_accumulation_steps = accumulation
    trainer.model.train()
    return trainer


@pytest.fixture(scope="module")
def trainer_for(tiny_model_dir, tmp_path_factory):
    """One trainer per (loss type, batch size, accumulation, mode), loaded once: a gradient computation leaves no
    trace."""
    made = {}

    def get(loss_type, batch_size, accumulation, mode="sampled_token"):
        key = (loss_type, batch_size, accumulation, mode)
        if key not in made:
            made[key] = make_trainer(tiny_model_dir, tmp_path_factory.mktemp("run"), *key)
        return made[key]

    return get


def step_gradient(trainer, batch, accumulation):
    """The summed gradient of one optimizer step's micro-batches, each through Trainer.training_step."""
    batch = {**batch, "loss_normalizer": trainer._loss_normalizer(batch["completion_mask"], batch["has_feedback"])}
    trainer.model.zero_grad()
    for micro in split_tensor_dict(batch, accumulation):
        trainer.training_step(trainer.model, micro)
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


def select(batch, rows):
    index = torch.tensor(rows)
    return {k: (v[index] if isinstance(v, torch.Tensor) and v.ndim > 0 else v) for k, v in batch.items()}


def generate(trainer):
    """One generation batch of four answers (one without feedback), scored once and reused by every split."""
    trainer.model.train()
    batch = trainer._generate_and_score_completions(
        [{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS]
    )
    assert batch["has_feedback"].tolist() == [True, False, True, True]
    # Answers of different lengths, as an early EOS would leave them, so per-answer and per-token means differ.
    mask = batch["completion_mask"].clone()
    mask[0, 4:] = 0
    mask[3, 7:] = 0
    assert mask[[0, 2, 3]].sum(1).unique().numel() == 3
    return {**batch, "completion_mask": mask}


@pytest.fixture(scope="module")
def generation(trainer_for):
    return generate(trainer_for("grpo", 4, 1))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_does_not_depend_on_the_micro_batch_split(trainer_for, generation, loss_type):
    whole = step_gradient(trainer_for(loss_type, 4, 1), generation, 1)
    split = step_gradient(trainer_for(loss_type, 2, 2), generation, 2)
    assert whole.keys() == split.keys() and len(whole) > 0
    scale = max(g.abs().max().item() for g in whole.values())
    assert scale > 0
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("mode", ["topk_logits", "full_logits"])
def test_the_logit_modes_gradient_does_not_depend_on_the_micro_batch_split(tiny_model_dir, tmp_path, mode):
    """The logit modes score the teacher in the loss, from the hindsight contexts the batch carries (B, C), which
    TRL's shuffle and split must keep with their answers."""
    whole_trainer = make_trainer(tiny_model_dir, tmp_path / "whole", "grpo", 4, 1, mode)
    batch = generate(whole_trainer)
    assert batch["teacher_logps"] is None and batch["teacher_ids"].size(0) == 4
    whole = step_gradient(whole_trainer, batch, 1)
    split = step_gradient(make_trainer(tiny_model_dir, tmp_path / "split", "grpo", 2, 2, mode), batch, 2)
    scale = max(g.abs().max().item() for g in whole.values())
    assert scale > 0 and whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_answers_without_feedback_neither_contribute_nor_dilute(trainer_for, generation, loss_type):
    with_silent = step_gradient(trainer_for(loss_type, 4, 1), generation, 1)
    answered = select(generation, [0, 2, 3])
    without = step_gradient(trainer_for(loss_type, 3, 1), answered, 1)
    scale = max(g.abs().max().item() for g in without.values())
    for name in without:
        torch.testing.assert_close(with_silent[name], without[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_grpo_weighs_answers_equally_and_dapo_weighs_tokens(trainer_for, generation):
    """The two definitions differ whenever answers differ in length: a check that the loss type is honoured."""
    grpo = step_gradient(trainer_for("grpo", 4, 1), generation, 1)
    dapo = step_gradient(trainer_for("dapo", 4, 1), generation, 1)
    assert any(not torch.allclose(grpo[n], dapo[n], rtol=1e-3, atol=0) for n in grpo)
