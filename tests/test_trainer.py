"""OnlineSDPOTrainer's plumbing, on the CPU: one shared two-step run of a tiny random model on the embedded
tokenizer (tests/conftest.py), its token log recomputed with plain transformers.

The simulated user is deterministic and names the request it answers (tests/fakes.py), so pairing can be checked;
the local model simulator itself is tested in test_user_simulator.py and end to end in test_train_cli.py. What the
embedded 135M model's own behaviour decides (stopping at the end of its turn) is tested on that model there.
"""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpo_interactions.prompts import SYSTEM_PROMPTS, prompt_messages
from sdpo_interactions.run_files import RUN_SETTINGS_NAME
from sdpo_interactions import OnlineSDPOConfig, OnlineSDPOTrainer
from sdpo_interactions.core.maths import derangement
from sdpo_interactions.core.specificity import SpecificityWatch
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME, TokenLog
from sdpo_interactions.testing.runs import REQUESTS as ALL_REQUESTS
from sdpo_interactions.testing.runs import naming_feedback

from fakes import NamingUser, SameReplyUser

REQUESTS = ALL_REQUESTS[:4]  # none of them is the one the naming user is silent on
RECORD_FIELDS = {
    "step", "prompt", "completion", "feedback", "style", "student_context", "teacher_context",
    "completion_ids", "tokens", "logp_student", "logp_teacher", "signal", "stranger_feedback", "signal_unrelated",
    "distillation_mode", "value_label", "value",
}


def completion_words(completions, **kwargs):
    """A monitoring reward: it is logged, never trained on."""
    return [float(len(c[0]["content"].split())) for c in completions]


def make_config(output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=2,
        max_completion_length=12,
        learning_rate=1e-4,
        logging_steps=1,
        save_steps=2,
        token_log_samples=2,
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        seed=7,
    )
    settings.update(overrides)
    return OnlineSDPOConfig(**settings)


def prompt_dataset():
    return Dataset.from_list([{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS])


def reference_logps(model, tokenizer, context, completion_ids):
    """log p(y_t | context, y_<t) with plain transformers, one unpadded sequence at a time."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([context_ids + completion_ids])).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    return [logps[len(context_ids) - 1 + i, token].item() for i, token in enumerate(completion_ids)]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A real two-step run, with every scoring forward pass of the policy counted."""
    output_dir = tmp_path_factory.mktemp("run")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    user = NamingUser()
    trainer = OnlineSDPOTrainer(
        model=tiny_model_dir, user_simulator=user, args=make_config(output_dir), train_dataset=prompt_dataset(),
        processing_class=tokenizer, run_settings={"style": user.style}, reward_funcs=[completion_words],
    )
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    scored = []

    def count_scoring_passes(module, args, kwargs):
        # TRL's scoring helper calls the model with use_cache=False; generation calls it with the cache on.
        if kwargs.get("use_cache") is False:
            scored.append(kwargs["input_ids"].shape[0])

    hook = trainer.model.register_forward_pre_hook(count_scoring_passes, with_kwargs=True)
    trainer.train()
    hook.remove()
    final = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    records = [json.loads(line) for line in (output_dir / TOKEN_LOG_NAME).read_text().splitlines()]
    return dict(trainer=trainer, user=user, initial=initial, final=final, scored=scored, records=records,
                output_dir=output_dir, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def trained_without_reward(tiny_model_dir, tmp_path_factory):
    """The same run (same seed, same user) without the monitoring reward function."""
    trainer = OnlineSDPOTrainer(
        model=tiny_model_dir, user_simulator=NamingUser(), args=make_config(tmp_path_factory.mktemp("run")),
        train_dataset=prompt_dataset(), processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    trainer.train()
    return trainer


def test_two_scoring_passes_per_sample(trained):
    args = trained["trainer"].args
    samples = args.max_steps * args.per_device_train_batch_size
    # Plus, at each logging step, the specificity metric's teacher pass on the answers it re-scores.
    rescored = args.max_steps * min(args.specificity_samples, args.per_device_train_batch_size)
    assert sum(trained["scored"]) == 2 * samples + rescored


def test_training_changes_weights_and_writes_a_checkpoint(trained):
    trainer, initial = trained["trainer"], trained["initial"]
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), initial[n])]
    assert len(changed) > len(initial) // 2
    checkpoint = trained["output_dir"] / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    settings = json.loads((checkpoint / RUN_SETTINGS_NAME).read_text())
    assert settings["style"] == "concise_casual_beginner"
    assert settings["hindsight_template"] == trainer.args.hindsight_template
    assert settings["chat_template_kwargs"] == {"enable_thinking": False}
    assert settings["user_simulator"]["class"] == "NamingUser"
    assert settings["loss_type"] == "grpo" and settings["sampling"]["temperature"] == 1.0
    # Two steps of two answers, all answered: the checkpoint knows how many interactions it has seen.
    assert settings["interactions"] == {"answers": 4, "with_feedback": 4} and settings["global_step"] == 2


def test_a_simulator_without_generate_feedback_is_refused_clearly(tiny_model_dir, tmp_path):
    class NotAUser:
        style = "poetic"

    with pytest.raises(TypeError, match="has no generate_feedback"):
        OnlineSDPOTrainer(model=tiny_model_dir, user_simulator=NotAUser(), args=make_config(tmp_path),
                          train_dataset=prompt_dataset(),
                          processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))


def test_a_simulator_without_style_trains_and_records_none(tiny_model_dir, tmp_path):
    trainer = OnlineSDPOTrainer(model=tiny_model_dir, user_simulator=SameReplyUser(),
                                args=make_config(tmp_path, max_steps=1), train_dataset=prompt_dataset(),
                                processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    trainer.train()
    settings = json.loads((tmp_path / "checkpoint-1" / RUN_SETTINGS_NAME).read_text())
    assert settings["style"] is None and settings["user_simulator"]["class"] == "SameReplyUser"


def test_metrics_are_logged_and_rewards_only_monitored(trained, trained_without_reward):
    history = [entry for entry in trained["trainer"].state.log_history if "loss" in entry]
    assert len(history) == 2
    for entry in history:
        for key in ("sdpo/signal_mean", "sdpo/sequence_log_ratio", "sdpo/teacher_logp", "sdpo/student_logp",
                    "user_sim/feedback_tokens", "user_sim/empty_feedback_frac", "user_sim/seconds", "entropy",
                    "hindsight/shortened_frac", "rewards/completion_words/mean"):
            assert key in entry, key
        # on-policy there is no behaviour policy to clip against: no clip metrics that could only be zero
        assert not any(key.startswith("clip_ratio/") for key in entry)
        assert entry["user_sim/empty_feedback_frac"] == 0.0 and entry["rewards/completion_words/mean"] > 0
    # The reward function cannot have entered the loss: without it, the same run logs the same losses and ends with
    # the same weights, bit for bit.
    plain = [entry for entry in trained_without_reward.state.log_history if "loss" in entry]
    assert [entry["loss"] for entry in plain] == [entry["loss"] for entry in history]
    assert all(torch.equal(p.detach(), trained["final"][name])
               for name, p in trained_without_reward.model.named_parameters())


def test_chat_template_kwargs_reach_both_contexts(trained):
    trainer = trained["trainer"]
    saved = trainer.tokenizer.chat_template
    trainer.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}[thinking={{ enable_thinking }}]"
    )
    try:
        messages = prompt_messages(REQUESTS[0], SYSTEM_PROMPTS["tldr"])
        teacher, _ = trainer.contexts.teacher_context(messages, "shorter")
        student = trainer.contexts.render(messages)
    finally:
        trainer.tokenizer.chat_template = saved
    assert student.endswith("[thinking=False]") and teacher.endswith("[thinking=False]")


def test_token_log_records_have_the_documented_format(trained):
    records = trained["records"]
    assert len(records) == 4  # two logging steps, token_log_samples=2 each
    assert sorted(r["step"] for r in records) == [0, 0, 1, 1]
    for record in records:
        assert set(record) == RECORD_FIELDS
        n = len(record["completion_ids"])
        assert n > 0 and all(len(record[k]) == n for k in ("tokens", "logp_student", "logp_teacher", "signal"))
        for s, t, a in zip(record["logp_student"], record["logp_teacher"], record["signal"]):
            assert a == pytest.approx(t - s, abs=1e-5)
        assert "".join(record["tokens"]).replace("<|im_end|>", "") == record["completion"]


def test_feedback_stays_with_its_own_sample(trained):
    for record in trained["records"]:
        assert record["prompt"] in REQUESTS
        assert record["feedback"] == naming_feedback(record["prompt"]) != ""
    for prompts, completions in trained["user"].calls:
        assert len(prompts) == len(completions) == 2


def test_teacher_context_places_feedback_after_the_request(trained):
    for record in trained["records"]:
        student, teacher = record["student_context"], record["teacher_context"]
        request_at = teacher.index(record["prompt"])
        feedback_at = teacher.index(record["feedback"])
        assistant_at = teacher.rindex("<|im_start|>assistant\n")
        assert request_at < feedback_at < assistant_at
        assert teacher.endswith("<|im_start|>assistant\n") and student.endswith("<|im_start|>assistant\n")
        assert SYSTEM_PROMPTS["tldr"] in teacher and SYSTEM_PROMPTS["tldr"] in student
        assert record["feedback"] not in student


def test_advantage_matches_an_independent_computation(trained, tiny_model_dir):
    """Step-0 records were scored with the initial weights: recompute them with plain transformers."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = trained["tokenizer"]
    for record in [r for r in trained["records"] if r["step"] == 0]:
        ids = record["completion_ids"]
        student = reference_logps(model, tokenizer, record["student_context"], ids)
        teacher = reference_logps(model, tokenizer, record["teacher_context"], ids)
        assert record["logp_student"] == pytest.approx(student, abs=2e-3)
        assert record["logp_teacher"] == pytest.approx(teacher, abs=2e-3)
        assert record["signal"] == pytest.approx([t - s for t, s in zip(teacher, student)], abs=3e-3)


def test_same_completion_tokens_in_both_contexts(trained):
    trainer = trained["trainer"]
    captured = []
    hook = trainer.model.register_forward_pre_hook(
        lambda m, a, k: captured.append(k["input_ids"].clone()) if k.get("use_cache") is False else None,
        with_kwargs=True,
    )
    trainer.model.train()
    specificity_samples, trainer.args.specificity_samples = trainer.args.specificity_samples, 0
    try:  # no stranger pass: the one pass captured is the teacher's
        batch = trainer._generate_and_score_completions(
            [{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS[:2]]
        )
    finally:
        trainer.args.specificity_samples = specificity_samples
        hook.remove()
    completion = batch["completion_ids"]
    (teacher_input,) = captured  # on-policy: generation makes the teacher pass only
    assert torch.equal(teacher_input[:, -completion.size(1):], completion)
    tokenizer = trained["tokenizer"]
    for row, context in zip(teacher_input[:, : -completion.size(1)], batch["teacher_context"]):
        assert tokenizer.decode(row[row != tokenizer.pad_token_id]) == context.replace("<|im_end|>", "") or (
            context in tokenizer.decode(row)
        )


def test_truncated_completions_are_masked_only_when_asked(trained):
    trainer = trained["trainer"]
    # Eight sampled answers of up to 12 tokens: the tiny model ends some with <|im_end|> and runs others to the limit.
    prompts = [{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS * 2]
    eos = trainer.eos_token_id
    kinds = set()
    for mask_truncated in (False, True):
        trainer.mask_truncated_completions = mask_truncated
        batch = trainer._generate_and_score_completions(prompts)
        ids, mask = batch["completion_ids"], batch["completion_mask"]
        for row_ids, row_mask in zip(ids, mask):
            length = int((row_ids != trainer.pad_token_id).sum()) + int(eos in row_ids.tolist())
            truncated = eos not in row_ids.tolist()
            kinds.add(truncated)
            if mask_truncated and truncated:
                assert row_mask.sum() == 0
            else:
                # padding after the first EOS is masked, the completion (EOS included) is not
                assert row_mask.sum() == min(length, ids.size(1))
    trainer.mask_truncated_completions = False
    assert kinds == {True, False}, "every answer stopped, or none did: the test checked one case only"


def test_samples_without_feedback_contribute_no_policy_gradient(trained):
    trainer = trained["trainer"]
    trainer.user_simulator = NamingUser(silent_on=REQUESTS)
    try:
        batch = trainer._generate_and_score_completions(
            [{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS[:2]]
        )
    finally:
        trainer.user_simulator = trained["user"]
    assert not batch["has_feedback"].any()
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert loss.item() == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads)
    trainer.model.zero_grad()


def test_score_signal_uses_the_training_contexts(trained):
    trainer, tokenizer = trained["trainer"], trained["tokenizer"]
    messages = prompt_messages(REQUESTS[0], SYSTEM_PROMPTS["tldr"])
    (record,) = trainer.score_signal([messages], ["TL;DR: rent up 30%."], ["Way too short, explain the law."])
    assert record["teacher_context"] == trainer.contexts.teacher_context(messages, "Way too short, explain the law.")[0]
    assert record["completion_ids"][-1] == tokenizer.eos_token_id
    model = trainer.model.eval()
    student = reference_logps(model, tokenizer, record["student_context"], record["completion_ids"])
    teacher = reference_logps(model, tokenizer, record["teacher_context"], record["completion_ids"])
    assert record["logp_student"] == pytest.approx(student, abs=2e-3)
    assert record["logp_teacher"] == pytest.approx(teacher, abs=2e-3)


def test_resumed_run_trims_repeated_steps_from_the_token_log(tmp_path):
    log = tmp_path / TOKEN_LOG_NAME
    log.write_text("".join(json.dumps({"step": s, "prompt": str(s)}) + "\n" for s in (0, 1, 2, 3)))
    TokenLog(log, samples_per_window=2).trim(2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1]


# -- is the policy reading its feedback? ---------------------------------------------------------------------------


def test_a_derangement_never_pairs_a_sample_with_itself():
    for n in range(2, 9):
        stranger = derangement(n)
        assert sorted(stranger) == list(range(n)) and all(stranger[i] != i for i in range(n))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def test_specificity_is_logged_as_own_minus_stranger(trained):
    history = [entry for entry in trained["trainer"].state.log_history if "loss" in entry]
    for entry in history:
        own, unrelated = entry["sdpo/signal_abs_own"], entry["sdpo/signal_abs_unrelated"]
        assert entry["sdpo/feedback_specificity"] == pytest.approx(own - unrelated, abs=1e-6)
        assert own > 0 and unrelated > 0


def test_the_stranger_signal_is_the_teacher_pass_under_another_samples_feedback(trained, tiny_model_dir):
    """Each re-scored record carries the feedback of another request; recompute its signal with plain transformers."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer, trainer = trained["tokenizer"], trained["trainer"]
    checked = 0
    for record in [r for r in trained["records"] if r["step"] == 0 and r["stranger_feedback"] is not None]:
        assert record["stranger_feedback"] != record["feedback"]  # another request's reply, never its own
        messages = prompt_messages(record["prompt"], SYSTEM_PROMPTS["tldr"])
        context, _ = trainer.contexts.teacher_context(messages, record["stranger_feedback"])
        ids = record["completion_ids"]
        stranger = reference_logps(model, tokenizer, context, ids)
        student = reference_logps(model, tokenizer, record["student_context"], ids)
        assert record["signal_unrelated"] == pytest.approx([s - t for s, t in zip(stranger, student)], abs=3e-3)
        checked += 1
    assert checked == 2


def test_specificity_is_exactly_zero_when_all_feedback_is_identical(trained):
    trainer = trained["trainer"]
    trainer.user_simulator = SameReplyUser()
    try:
        trainer.model.train()
        batch = trainer._generate_and_score_completions(
            [{"prompt": prompt_messages(r, SYSTEM_PROMPTS["tldr"])} for r in REQUESTS[:2]]
        )
    finally:
        trainer.user_simulator = trained["user"]
    assert batch["stranger_feedback"] == ["Shorter, please.", "Shorter, please."]
    trainer._metrics["train"].clear()
    trainer._compute_loss(trainer.model, batch)
    assert trainer._metrics["train"]["sdpo/feedback_specificity"] == [0.0]


def test_a_flat_specificity_warns_once(caplog):
    watch = SpecificityWatch(minimum=0.02, patience=2)
    with caplog.at_level("WARNING", logger="sdpo_interactions.core.specificity"):
        for value in (0.001, 0.5, 0.0, 0.01, 0.0, None):  # the reset at 0.5, then two flat steps, then a third
            watch.observe(value)
    assert caplog.text.count("does not seem to read its user's feedback") == 1
    assert watch.flat_steps == 3
