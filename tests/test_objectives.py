"""The objectives researchers compare (distillation_mode) and the teachers (teacher_model_kind): each loss on tiny
hand-made tensors computed by hand, top-k with k = V against the full vocabulary, the paper's equivalence of the
sampled-token gradient and the reverse-KL gradient measured on a tiny random model, chunking, the EMA update by hand,
the base teacher under LoRA, a bit-exact resume with an EMA teacher, and every mode with every teacher, online and
offline, with and without LoRA, on a tiny random model built on the embedded tokenizer."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerState

from sdpo_interactions.core.batch import SDPOBatch
from sdpo_interactions.core.config import OfflineSDPOConfig, OnlineSDPOConfig
from sdpo_interactions.core.distillation import LogitDistillation, OutputHead
from sdpo_interactions.core.divergence import add_tail_bucket, divergence, importance_ratio, topk_support
from sdpo_interactions.core.objectives import (
    ObjectiveSettings,
    full_divergence,
    logit_distillation,
    sampled_token,
    topk_divergence,
    value_label,
)
from sdpo_interactions.core.offline import OfflineSDPOTrainer
from sdpo_interactions.core.teacher import LiveTeacher, ShadowTeacher
from sdpo_interactions.core.teacher_sync import TEACHER_STATE_NAME, TeacherSync
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME
from sdpo_interactions.core.trainer import OnlineSDPOTrainer
from sdpo_interactions.run_files import read_run_settings
from sdpo_interactions.users.base import UserSimulator

SETTINGS = ObjectiveSettings(advantage_baseline="none", signal_clip=None, epsilon_low=0.2, epsilon_high=0.2,
                             delta=None, sequence_level_ratio=False)


def logs(*probabilities):
    return torch.tensor([probabilities], dtype=torch.float64).log()


def kl_by_hand(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


# ---------------------------------------------------------------------------------------------------------------
# The definitions, by hand
# ---------------------------------------------------------------------------------------------------------------

STUDENT = (0.5, 0.3, 0.15, 0.05)
TEACHER = (0.1, 0.2, 0.3, 0.4)


def test_the_tail_bucket_holds_the_mass_outside_the_top_k():
    assert add_tail_bucket(logs(0.5, 0.3)).exp().tolist()[0] == pytest.approx([0.5, 0.3, 0.2])
    # all the mass inside: the captured log-mass is capped at -1e-7, so the tail stays finite (about 1e-7)
    assert add_tail_bucket(logs(0.75, 0.25)).exp()[0, 2].item() == pytest.approx(1e-7, rel=1e-3)


def test_the_support_is_the_students_top_k_with_a_tail_or_renormalised():
    student, teacher = topk_support(logs(*STUDENT), logs(*TEACHER), k=2, add_tail=True)
    # the student's top 2 are tokens 0 and 1, although the teacher's are 3 and 2
    assert student.exp().tolist()[0] == pytest.approx([0.5, 0.3, 0.2])
    assert teacher.exp().tolist()[0] == pytest.approx([0.1, 0.2, 0.7])
    student, teacher = topk_support(logs(*STUDENT), logs(*TEACHER), k=2, add_tail=False)
    assert student.exp().tolist()[0] == pytest.approx([5 / 8, 3 / 8])
    assert teacher.exp().tolist()[0] == pytest.approx([1 / 3, 2 / 3])


def test_reverse_forward_and_jensen_shannon_by_hand():
    s, t = logs(*STUDENT), logs(*TEACHER)
    assert divergence(s, t, alpha=1.0).item() == pytest.approx(kl_by_hand(STUDENT, TEACHER))
    assert divergence(s, t, alpha=0.0).item() == pytest.approx(kl_by_hand(TEACHER, STUDENT))
    for alpha in (0.5, 0.25):
        mixture = [(1 - alpha) * a + alpha * b for a, b in zip(STUDENT, TEACHER)]
        expected = (1 - alpha) * kl_by_hand(STUDENT, mixture) + alpha * kl_by_hand(TEACHER, mixture)
        assert divergence(s, t, alpha=alpha).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        divergence(s, t, alpha=1.5)


def test_the_reverse_kl_gradient_by_hand():
    """d KL(S||T) / d z_i = s_i (log s_i - log t_i - KL) for the student's logits z; the teacher gets none."""
    logits = torch.tensor([[1.0, 0.5, -0.5, 2.0]], dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.tensor([[0.0, 1.0, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    s, t = logits.log_softmax(-1), teacher_logits.log_softmax(-1)
    divergence(s, t, alpha=1.0).sum().backward()
    value = (s.exp() * (s - t)).sum()
    expected = s.exp() * (s - t - value)
    assert logits.grad.tolist()[0] == pytest.approx(expected.detach().tolist()[0])
    assert teacher_logits.grad is None


def test_the_objectives_registry_entries_by_hand():
    s, t = logs(*STUDENT), logs(*TEACHER)
    topk = ObjectiveSettings(**{**SETTINGS.__dict__, "distillation_topk": 2, "distillation_add_tail": True})
    expected = kl_by_hand((0.5, 0.3, 0.2), (0.1, 0.2, 0.7))
    assert topk_divergence(s, t, topk).item() == pytest.approx(expected)
    assert full_divergence(s, t, SETTINGS).item() == pytest.approx(kl_by_hand(STUDENT, TEACHER))


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.5])
def test_top_k_over_the_whole_vocabulary_is_full_logits(add_tail, alpha):
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 32).log_softmax(-1), torch.randn(5, 32).log_softmax(-1)
    settings = ObjectiveSettings(**{**SETTINGS.__dict__, "distillation_topk": 32, "distillation_add_tail": add_tail,
                                    "distillation_alpha": alpha})
    torch.testing.assert_close(topk_divergence(student, teacher, settings), full_divergence(student, teacher, settings),
                               rtol=1e-5, atol=1e-6)


def test_the_importance_clip_is_one_sided_and_only_with_a_behaviour_policy():
    """TRL's own example: ratios 4 and 1.5 under a clip of 2 weigh 2 and 1.5; a small ratio is not raised."""
    logps = torch.tensor([[math.log(4.0), math.log(1.5), math.log(0.25)]])
    assert importance_ratio(logps, torch.zeros(1, 3)).tolist()[0] == pytest.approx([4.0, 1.5, 0.25])
    per_token = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    kwargs = dict(student_logps=logps, teacher_logps=torch.zeros(1, 3), reference_logps=logps,
                  per_token_divergence=per_token)
    clipped = ObjectiveSettings(**{**SETTINGS.__dict__, "distillation_is_clip": 2.0})
    result = logit_distillation(behaviour_logps=torch.zeros(1, 3), settings=clipped, **kwargs)
    assert result.per_token_loss.tolist()[0] == pytest.approx([2.0, 3.0, 0.75])
    assert result.ratio.tolist()[0] == pytest.approx([4.0, 1.5, 0.25]) and result.advantages is None
    for behaviour, settings in ((None, clipped), (torch.zeros(1, 3), SETTINGS)):  # on-policy, or the clip unset
        plain = logit_distillation(behaviour_logps=behaviour, settings=settings, **kwargs)
        assert plain.per_token_loss.tolist() == [[1.0, 2.0, 3.0]] and plain.ratio is None
    assert result.token_values.tolist() == [[1.0, 2.0, 3.0]]  # the divergence, as the token log records it
    assert result.signal.tolist()[0] == pytest.approx([-math.log(4.0), -math.log(1.5), -math.log(0.25)])


def test_each_mode_names_what_it_optimises():
    assert value_label("sampled_token", SETTINGS) == "signal = teacher − student log-prob of the sampled token"
    jsd = ObjectiveSettings(**{**SETTINGS.__dict__, "distillation_alpha": 0.5, "distillation_add_tail": False})
    assert value_label("topk_logits", jsd) == "generalised JSD (alpha 0.5) over the student's top-50 tokens renormalised"
    assert value_label("full_logits", SETTINGS) == "reverse KL(student ‖ teacher) over the whole vocabulary"


# ---------------------------------------------------------------------------------------------------------------
# The paper's equivalence, measured
# ---------------------------------------------------------------------------------------------------------------


def small_model(vocab_size=64, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # peakier next-token distributions than a fresh init's near-uniform ones
        model.lm_head.weight.mul_(20.0)
    return model


def flat_grad(model, loss):
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return torch.cat([g.flatten() for g in grads])


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


PROMPT = torch.tensor([[5, 9, 13, 2]])
HINDSIGHT = torch.tensor([[5, 9, 13, 40, 41, 42, 2]])  # the prompt with a "feedback" in it


def distiller(model, chunk_size=4096):
    return LogitDistillation(LiveTeacher(lambda: model, None, lambda m: m),
                             lambda s, t: full_divergence(s, t, SETTINGS), head=OutputHead.of(model),
                             temperature=1.0, chunk_size=chunk_size, unwrap=lambda m: m)


def sample_answers(model, n, length, seed):
    """n answers of `length` tokens sampled from the model after PROMPT, at temperature 1."""
    generator = torch.Generator().manual_seed(seed)
    ids = PROMPT.expand(n, -1)
    with torch.no_grad():
        for _ in range(length):
            probs = model(input_ids=ids).logits[:, -1].softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return ids[:, PROMPT.size(1):]


def both_losses(model, answers):
    """(sampled-token loss, full reverse-KL loss), each the sum over positions averaged over the answers."""
    n, length = answers.shape
    ones = torch.ones(n, length, dtype=torch.long)
    terms = distiller(model).terms(model, PROMPT.expand(n, -1), torch.ones(n, PROMPT.size(1), dtype=torch.long),
                                   answers, ones, HINDSIGHT.expand(n, -1),
                                   torch.ones(n, HINDSIGHT.size(1), dtype=torch.long))
    sampled = sampled_token(student_logps=terms.student_logps, teacher_logps=terms.teacher_logps,
                            reference_logps=terms.student_logps.detach(), behaviour_logps=None, mask=ones,
                            has_feedback=torch.ones(n, dtype=torch.bool), sequence_baseline=None, settings=SETTINGS)
    return sampled.per_token_loss.sum() / n, terms.divergence.sum() / n


SAMPLE_SIZES = (16, 256, 4096)


def test_one_position_the_sampled_token_gradient_averages_to_the_reverse_kl_gradient():
    """At a single position, E_{y ~ S}[-(log T(y) - log S(y)) grad log S(y)] = grad KL(S || T) exactly (Eq. 1-3:
    the gradient of sum_y S(y) (log S(y) - log T(y)) is that expectation, plus E[grad log S] = 0). The Monte Carlo
    mean over n sampled one-token answers approaches it as n grows."""
    model = small_model()
    _, full = both_losses(model, sample_answers(model, 1, 1, seed=0))  # one position: the same for every answer
    target = flat_grad(model, full)
    similarity = [cosine(flat_grad(model, both_losses(model, sample_answers(model, n, 1, seed=n))[0]), target)
                  for n in SAMPLE_SIZES]
    print("one position, cosine(mean sampled-token gradient, reverse-KL gradient) for n =",
          dict(zip(SAMPLE_SIZES, [round(c, 4) for c in similarity])))
    assert similarity == sorted(similarity) and similarity[-1] > 0.99


def test_over_answers_the_sampled_token_gradient_averages_to_the_full_logits_gradient():
    """Over 4-token answers the sampled-token gradient is unbiased for the gradient full_logits takes: the sum over
    positions of grad KL(S || T) at each sampled prefix, the prefix held fixed. (Neither is the gradient of the
    sequence-level KL, which also moves the prefixes' probabilities.) The reference is full_logits' gradient over
    a large independent sample."""
    model = small_model(seed=1)
    target = flat_grad(model, both_losses(model, sample_answers(model, 2048, 4, seed=7))[1])
    sizes = (16, 128, 2048)
    similarity = [cosine(flat_grad(model, both_losses(model, sample_answers(model, n, 4, seed=n))[0]), target)
                  for n in sizes]
    print("4-token answers, cosine(mean sampled-token gradient, full_logits gradient) for n =",
          dict(zip(sizes, [round(c, 4) for c in similarity])))
    assert similarity == sorted(similarity) and similarity[-1] > 0.98


# ---------------------------------------------------------------------------------------------------------------
# Every mode with every teacher, in the trainers (a tiny random model on the embedded tokenizer)
# ---------------------------------------------------------------------------------------------------------------

MODES = ("sampled_token", "topk_logits", "full_logits")
TEACHERS = ("live", "base", "ema")
LORA = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def tiny_model(model_dir, tmp_path_factory) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


class CannedUser(UserSimulator):
    style = "concise_casual_beginner"

    def generate_feedback(self, prompts, completions):
        return ["" if "silent" in p else f"Too long; two lines about {p[:12]}, please." for p in prompts]


REQUESTS = ["How do I boil an egg?", "Why is the sky blue?", "Stay silent on this one.", "Name a fast cat."]


def logged_rows():
    return [{"prompt": [{"role": "user", "content": r}], "completion": f"Here is a long answer about {r.lower()}",
             "feedback": "" if "silent" in r else "Shorter, please."} for r in REQUESTS]


def make_trainer(model, output_dir, *, online=False, peft=None, **fields):
    config_class = OnlineSDPOConfig if online else OfflineSDPOConfig
    fields = {"max_steps": 2, "save_steps": 1, "learning_rate": 5e-2, **fields}
    config = config_class(output_dir=str(output_dir), per_device_train_batch_size=4, report_to=[], bf16=False,
                          logging_steps=1, max_completion_length=6, seed=3, distillation_topk=5,
                          gradient_checkpointing=False, **fields)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if online:
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": r}]} for r in REQUESTS])
        return OnlineSDPOTrainer(model=model, user_simulator=CannedUser(), args=config, train_dataset=data,
                                 processing_class=tokenizer, peft_config=peft)
    return OfflineSDPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(logged_rows()),
                              processing_class=tokenizer, peft_config=peft)


def read_token_log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / TOKEN_LOG_NAME).read_text().splitlines()]


def check_run(output_dir, trainer, mode, teacher, steps):
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
    assert ("sdpo/divergence_mean" in trainer.state.log_history[-2]) == (mode != "sampled_token")
    # The specificity metric re-scores with the sample's own teacher log-probs, which a logit mode computes only
    # in the loss: it must still be measured in every mode.
    specificity = [e["sdpo/feedback_specificity"] for e in trainer.state.log_history if "sdpo/feedback_specificity" in e]
    assert len(specificity) == steps and all(math.isfinite(v) for v in specificity)
    records = read_token_log(output_dir)
    assert records and {r["distillation_mode"] for r in records} == {mode}
    for record in records:
        assert len(record["value"]) == len(record["signal"]) == len(record["tokens"])
        if mode == "sampled_token":
            assert record["value"] == record["signal"]
        else:
            assert min(record["value"]) > -1e-6 and "KL" in record["value_label"]
        assert record["signal"] == pytest.approx(
            [t - s for t, s in zip(record["logp_teacher"], record["logp_student"])], abs=1e-5)
    checkpoint = output_dir / f"checkpoint-{steps}"
    settings = read_run_settings(checkpoint)
    assert (settings["distillation_mode"], settings["teacher_model_kind"], settings["distillation_topk"]) == (
        mode, teacher, 5)
    assert {"distillation_add_tail", "distillation_alpha", "distillation_is_clip", "teacher_update_rate",
            "teacher_sync_steps", "signal_clip"} <= settings.keys()
    assert (checkpoint / TEACHER_STATE_NAME).is_file() == (teacher == "ema")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_mode_and_teacher_trains_offline_and_records_what_it_optimises(tiny_model, tmp_path, mode, teacher):
    trainer = make_trainer(tiny_model, tmp_path, max_steps=1, distillation_mode=mode, teacher_model_kind=teacher)
    trainer.train()
    check_run(tmp_path, trainer, mode, teacher, steps=1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_mode_and_teacher_trains_online_under_lora(tiny_model, tmp_path, mode, teacher):
    trainer = make_trainer(tiny_model, tmp_path, online=True, peft=LORA, distillation_mode=mode,
                           teacher_model_kind=teacher)
    trainer.train()
    check_run(tmp_path, trainer, mode, teacher, steps=2)


def first_batch(trainer):
    """The first generation batch of the trainer's data, scored as training scores it."""
    trainer.model.train()
    return trainer._generate_and_score_completions(list(trainer.train_dataset))


def gradient(trainer, batch):
    parts = trainer.micro_batch_loss(trainer.model, SDPOBatch.from_trl(batch))
    loss = (parts.per_token_loss * batch["completion_mask"]).sum()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return parts.per_token_loss.detach(), torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("mode", ["full_logits", "topk_logits"])
def test_chunking_changes_neither_the_loss_nor_its_gradient(tiny_model, tmp_path, mode):
    trainer = make_trainer(tiny_model, tmp_path, distillation_mode=mode, teacher_model_kind="base")
    trainer.model.double()  # float32 sums over another chunk shape differ in the last bits; float64 shows the maths
    batch = first_batch(trainer)
    trainer.micro_batch_loss.distillation.chunk_size = 10_000
    whole_loss, whole_grad = gradient(trainer, batch)
    trainer.micro_batch_loss.distillation.chunk_size = 1
    chunked_loss, chunked_grad = gradient(trainer, batch)
    assert whole_loss.abs().sum() > 0 and whole_grad.abs().sum() > 0
    torch.testing.assert_close(chunked_loss, whole_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=1e-7, atol=1e-12)


def test_the_ema_update_by_hand():
    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, -2.0]]))
    teacher = ShadowTeacher(lambda: module, None, lambda m: m, update_rate=0.25)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[3.0, 2.0]]))  # the student moves
    sync = TeacherSync(teacher, sync_steps=2)
    sync.on_step_end(None, TrainerState(global_step=1), None)  # not a sync step
    assert teacher.shadow["weight"].tolist() == [[1.0, -2.0]]
    sync.on_step_end(None, TrainerState(global_step=2), None)
    assert teacher.shadow["weight"].tolist() == [[1.5, -1.0]]  # 0.75 (1, -2) + 0.25 (3, 2)
    with teacher.weights() as model:
        assert model.weight.tolist() == [[1.5, -1.0]]  # swapped in for the teacher's passes
    assert module.weight.tolist() == [[3.0, 2.0]]  # and back out
    assert teacher.state_dict()["weight"].tolist() == [[1.5, -1.0]]


def test_an_ema_teacher_resumes_bit_for_bit(tiny_model, tmp_path, monkeypatch):
    """Four steps straight against two, a stop, and two more from checkpoint-2: the weights and the teacher agree to
    the bit (offline answers involve no sampling). Without the teacher's restore they would not."""
    fields = dict(max_steps=4, save_steps=2, teacher_model_kind="ema", teacher_update_rate=0.5, token_log_samples=0)
    make_trainer(tiny_model, tmp_path / "straight", **fields).train()
    initial = load_file(tmp_path / "straight" / "checkpoint-2" / TEACHER_STATE_NAME)
    resumed = {}
    for name, restore in (("resumed", TeacherSync.restore), ("without", lambda self, checkpoint: None)):
        monkeypatch.setattr(TeacherSync, "restore", restore)
        shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / name / "checkpoint-2")
        make_trainer(tiny_model, tmp_path / name, **fields).train(resume_from_checkpoint=True)
        resumed[name] = load_file(tmp_path / name / "checkpoint-4" / "model.safetensors")
    expected = load_file(tmp_path / "straight" / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(expected[k], resumed["resumed"][k]) for k in expected)
    assert not all(torch.equal(expected[k], resumed["without"][k]) for k in expected)
    teacher = load_file(tmp_path / "straight" / "checkpoint-4" / TEACHER_STATE_NAME)
    assert teacher.keys() == initial.keys() and not all(torch.equal(teacher[k], initial[k]) for k in teacher)
    again = load_file(tmp_path / "resumed" / "checkpoint-4" / TEACHER_STATE_NAME)
    assert all(torch.equal(teacher[k], again[k]) for k in teacher)


@pytest.mark.parametrize("mode", ["topk_logits", "full_logits"])
def test_a_logit_mode_resumes_bit_for_bit(tiny_model, tmp_path, mode):
    """The logit modes carry the hindsight contexts to the loss (teacher_ids) instead of teacher log-probs: a resumed
    run must rebuild them exactly, and end with the weights of the run that never stopped."""
    fields = dict(max_steps=4, save_steps=2, distillation_mode=mode, token_log_samples=0)
    make_trainer(tiny_model, tmp_path / "straight", **fields).train()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    make_trainer(tiny_model, tmp_path / "resumed", **fields).train(resume_from_checkpoint=True)
    expected = load_file(tmp_path / "straight" / "checkpoint-4" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoint-4" / "model.safetensors")
    start = load_file(tmp_path / "straight" / "checkpoint-2" / "model.safetensors")
    assert not all(torch.equal(expected[k], start[k]) for k in expected)  # the last two steps moved the weights
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_resuming_an_ema_teacher_without_its_file_is_refused(tiny_model, tmp_path):
    make_trainer(tiny_model, tmp_path / "live", max_steps=1, token_log_samples=0).train()
    trainer = make_trainer(tiny_model, tmp_path / "live", max_steps=2, teacher_model_kind="ema")
    with pytest.raises(ValueError, match=f"checkpoint-1 has no {TEACHER_STATE_NAME}"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "live" / "checkpoint-1"))


def teacher_and_initial_logps(trainer, tiny_model):
    """The trainer's teacher and a freshly loaded initial model on the same (context, answer) rows."""
    contexts, mask = trainer.scorer.context_ids(["<|im_start|>user\nHow do I boil an egg?<|im_end|>\n"] * 2)
    answers = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]) + 200
    answer_mask = torch.ones_like(answers)
    initial = LlamaForCausalLM.from_pretrained(tiny_model)
    return (trainer.teacher.logps(contexts, mask, answers, answer_mask),
            trainer.score_logps(initial, contexts, mask, answers, answer_mask),
            trainer.score_logps(trainer.model, contexts, mask, answers, answer_mask))


@pytest.mark.parametrize("peft", [LORA, None], ids=["lora", "full"])
def test_the_base_teacher_scores_with_the_initial_model(tiny_model, tmp_path, peft):
    """Under LoRA the adapters are off for its passes; without, the initial weights are swapped in."""
    trainer = make_trainer(tiny_model, tmp_path, peft=peft, teacher_model_kind="base", learning_rate=0.5,
                           token_log_samples=0)
    trainer.train()
    teacher, initial, policy = teacher_and_initial_logps(trainer, tiny_model)
    torch.testing.assert_close(teacher, initial, rtol=0, atol=1e-6)
    assert (policy - initial).abs().max() > 1e-3  # the policy has learned, the teacher has not


def test_models_the_logit_modes_cannot_project_are_refused_at_start(tiny_model, tmp_path):
    capped = tmp_path / "capped"
    model = LlamaForCausalLM.from_pretrained(tiny_model)
    model.config.final_logit_softcapping = 0.5  # read as Gemma's soft cap, which Llama's forward never applies
    model.save_pretrained(capped)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(capped)
    with pytest.raises(ValueError, match="changes its logits after the output layer"):
        make_trainer(str(capped), tmp_path / "a", distillation_mode="full_logits")
    head_lora = LoraConfig(r=2, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="plain linear output layer"):
        make_trainer(tiny_model, tmp_path / "b", peft=head_lora, distillation_mode="topk_logits")


def test_the_start_up_check_is_not_fooled_by_dropout(tiny_model, tmp_path):
    # B random rather than zero, so that the adapter's dropout changes the logits from one pass to the next
    dropout = LoraConfig(r=4, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                         init_lora_weights=False)
    trainer = make_trainer(tiny_model, tmp_path, peft=dropout, distillation_mode="full_logits")
    assert trainer.model.training  # and left as it was


def test_sharded_parameters_refuse_the_copying_teachers():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from sdpo_interactions.core.teacher import build_teacher, parameter_sharding

    zero3 = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    zero2 = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)))
    assert parameter_sharding(zero3) == "DeepSpeed ZeRO-3" and parameter_sharding(zero2) is None
    assert parameter_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP)) == "FSDP"
    module = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="which FSDP shards"):
        build_teacher("ema", lambda: module, None, unwrap=lambda m: m, update_rate=0.1, sharded="FSDP")
    assert build_teacher("live", lambda: module, None, unwrap=lambda m: m, update_rate=0.1, sharded="FSDP")


def offline_command(model, output_dir, nproc, *extra):
    sample = Path(__file__).resolve().parents[1] / "data" / "sample" / "conversations.jsonl"
    entry = str(Path(__file__).resolve().parents[1] / "train_offline.py")
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={nproc}", entry]
    return [*(launcher if nproc > 1 else [sys.executable, entry]), "--train_jsonl", str(sample),
            "--model_name_or_path", model, "--output_dir", str(output_dir), "--per_device_train_batch_size",
            str(2 // nproc), "--max_steps", "2", "--save_steps", "2", "--learning_rate", "1e-4", "--logging_steps", "1",
            "--max_prompt_length", "256", "--max_completion_length", "64", "--token_log_samples", "0", "--report_to",
            "none", "--bf16", "false", "--seed", "5", "--gradient_checkpointing", "false", "--teacher_update_rate",
            "0.5", *extra]


def peaky_copy(model_dir: str, folder: Path) -> str:
    """The model with its next-token distributions made peaky, so that divergences and their gradients stand well
    above float32 noise."""
    model = LlamaForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return str(folder)


def offline_run(model, output_dir, nproc, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(offline_command(model, output_dir, nproc, *extra), env=env, capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    history = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    files = {p.name: load_file(p) for p in sorted((output_dir / "checkpoint-2").glob("*.safetensors"))}
    if (output_dir / "checkpoint-2" / TEACHER_STATE_NAME).is_file():
        files[TEACHER_STATE_NAME] = load_file(output_dir / "checkpoint-2" / TEACHER_STATE_NAME)
    return [e for e in history if "grad_norm" in e], files


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["--distillation_mode", "full_logits", "--teacher_model_kind", "ema"],
    ["--distillation_mode", "topk_logits", "--distillation_topk", "5", "--teacher_model_kind", "base"],
], ids=["full_logits-ema", "topk_logits-base"])
def test_two_processes_train_like_one(tiny_model, tmp_path, extra):
    """torchrun over gloo, one answer per rank, against one process with both: the same losses, gradient norms,
    weights and EMA teacher, up to float32 sums taken in another order."""
    model = peaky_copy(tiny_model, tmp_path / "peaky")
    (one_log, one_files), (two_log, two_files) = (offline_run(model, tmp_path / f"run{n}", n, extra) for n in (1, 2))
    for a, b in zip(one_log, two_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    assert one_files.keys() == two_files.keys() and (TEACHER_STATE_NAME in one_files) == ("ema" in extra)
    for name, tensors in one_files.items():
        for key, value in tensors.items():
            torch.testing.assert_close(two_files[name][key], value, rtol=0, atol=4e-4, msg=f"{name}: {key}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["topk_logits", "sampled_token"])
def test_two_processes_train_under_lora_with_an_ema_adapter(tiny_model, tmp_path, mode):
    """Under LoRA the two world sizes start from different random adapters (the policy is wrapped before Trainer
    seeds), so the run is checked by itself: it ends, and the EMA adapter it saved is the adapter's average."""
    lora = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--lora_dropout", "0.0"]
    log, files = offline_run(peaky_copy(tiny_model, tmp_path / "peaky"), tmp_path / "two", 2,
                             ["--distillation_mode", mode, "--distillation_topk", "5", "--teacher_model_kind", "ema",
                              *lora])
    assert len(log) == 2 and all(math.isfinite(e["loss"]) and e["grad_norm"] > 0 for e in log)
    teacher, adapter = files[TEACHER_STATE_NAME], files["adapter_model.safetensors"]
    assert len(teacher) == len(adapter) and all("lora_" in name for name in teacher)
    moved = [name for name in teacher if "lora_B" in name and teacher[name].abs().max() > 0]
    assert moved  # B starts at zero: a nonzero teacher B is the student's B averaged in


def test_a_logit_modes_token_log_is_drawn_by_its_divergence(tiny_model, tmp_path):
    import html

    from sdpo_interactions.cli import visualize_signal

    make_trainer(tiny_model, tmp_path / "run", max_steps=1, distillation_mode="topk_logits").train()
    token_log = str(tmp_path / "run" / TOKEN_LOG_NAME)
    records = visualize_signal.read_token_log(token_log)
    scale = visualize_signal.colour_scale(records)
    assert scale.one_sided and scale.label == records[0]["value_label"] == value_label(
        "topk_logits", ObjectiveSettings(**{**SETTINGS.__dict__, "distillation_topk": 5}))
    assert scale.vmax == pytest.approx(max(max(r["value"]) for r in records))
    assert scale.colour(0.0) == visualize_signal.NEUTRAL and scale.colour(scale.vmax) == visualize_signal.DIVERGENCE
    visualize_signal.main(["log", "--token_log", token_log, "--output_dir", str(tmp_path / "signal")])
    page = (tmp_path / "signal" / "signal.html").read_text()
    assert html.escape(scale.label) in page and "coloured by divergence" in page
    assert (tmp_path / "signal" / "signal.png").stat().st_size > 0
    mixed = [records[0], {**records[0], "value_label": "forward KL(teacher ‖ student) over the whole vocabulary"}]
    with pytest.raises(ValueError, match="optimised different values"):
        visualize_signal.colour_scale(mixed)
