"""The pure pieces of SDPO, checked against values computed by hand."""

import math

import pytest
import torch

from sdpo_interactions.prompts import last_user_text
from sdpo_interactions.core.config import OnlineSDPOConfig, cpu_processes_need_use_cpu
from sdpo_interactions.core.hindsight import DEFAULT_HINDSIGHT_TEMPLATE, fit_request, hindsight_messages
from sdpo_interactions.core.maths import (
    aggregate_loss,
    clip_signal,
    leave_one_out_baseline,
    loss_normalizer,
    masked_mean,
    micro_batch_normalizer,
    ppo_clip_token_loss,
    sdpo_advantages,
)
from sdpo_interactions.core.objectives import OBJECTIVES, ObjectiveSettings, get_objective, sampled_token

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "Summarise this post."},
]


def test_hindsight_appends_feedback_to_last_user_turn_only():
    out = hindsight_messages(MESSAGES, "too long!", "\n[future]\n{feedback}")
    assert out[0] == MESSAGES[0]
    assert out[1] == MESSAGES[1] and out[2] == MESSAGES[2]
    assert out[3] == {"role": "user", "content": "Summarise this post.\n[future]\ntoo long!"}
    assert MESSAGES[3]["content"] == "Summarise this post."  # the input is not mutated
    assert last_user_text(MESSAGES) == "Summarise this post."


def test_default_template_announces_a_future_message():
    block = DEFAULT_HINDSIGHT_TEMPLATE.format(feedback="FEEDBACK")
    assert block.endswith("\nFEEDBACK")
    assert "future" in block and "guidance" in block


def test_prompt_without_user_turn_is_an_error():
    with pytest.raises(ValueError, match="no user message"):
        hindsight_messages([{"role": "system", "content": "x"}], "o", "{feedback}")


def test_masked_mean_ignores_padding_and_survives_empty_rows():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(1.5)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([1.5, 0.0])


def test_sequence_mean_centres_each_sequence_over_its_own_tokens():
    signal = torch.tensor([[1.0, 3.0, 100.0], [-2.0, 0.0, 2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    has_feedback = torch.tensor([True, True])
    adv = sdpo_advantages(signal, mask, baseline="sequence_mean", has_feedback=has_feedback)
    # row 0: mean of (1, 3) = 2 -> (-1, 1), padding -> 0; row 1: mean 0 -> unchanged
    assert adv.tolist() == [[-1.0, 1.0, 0.0], [-2.0, 0.0, 2.0]]


def test_raw_signal_and_missing_feedback_is_zero():
    signal = torch.tensor([[0.5, -0.25], [1.0, 1.0]])
    mask = torch.tensor([[1, 1], [1, 1]])
    adv = sdpo_advantages(signal, mask, baseline="none", has_feedback=torch.tensor([True, False]))
    assert adv.tolist() == [[0.5, -0.25], [0.0, 0.0]]


def test_leave_one_out_baseline_by_hand():
    scores = torch.tensor([1.0, 2.0, 6.0, 10.0, 20.0, 30.0])
    valid = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    baseline = leave_one_out_baseline(scores, valid, group_size=3)
    # group 1: (2+6)/2, (1+6)/2, (1+2)/2; group 2 ignores the invalid 20: 30/1, (10+30)/2, 10/1
    assert baseline.tolist() == pytest.approx([4.0, 3.5, 1.5, 30.0, 20.0, 10.0])
    lonely = leave_one_out_baseline(torch.tensor([5.0, 7.0]), torch.tensor([1.0, 0.0]), group_size=2)
    assert lonely.tolist() == [0.0, 5.0]
    adv = sdpo_advantages(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 1]]), baseline="leave_one_out",
                          has_feedback=torch.tensor([True]), sequence_baseline=torch.tensor([0.5]))
    assert adv.tolist() == [[0.5, 1.5]]


def test_ppo_clip_by_hand():
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    loss, ratio = ppo_clip_token_loss(logps, old, adv, epsilon_low=0.2, epsilon_high=0.2)
    # ratio 1.5 clipped to 1.2 for a positive advantage; 0.5 is unclipped on the pessimistic side; ratio 1 -> -A
    assert ratio.tolist()[0] == pytest.approx([1.5, 0.5, 1.0])
    assert loss.tolist()[0] == pytest.approx([-1.2, -0.5, 2.0])


def test_ppo_gradient_is_minus_advantage_on_policy():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.3, -0.7]])
    loss, _ = ppo_clip_token_loss(logps, logps.detach(), adv, epsilon_low=0.2, epsilon_high=0.2)
    loss.sum().backward()
    assert logps.grad.tolist()[0] == pytest.approx([-0.3, 0.7])


def test_sequence_level_ratio_is_geometric_mean():
    logps = torch.tensor([[math.log(2.0), math.log(0.5), 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    _, ratio = ppo_clip_token_loss(logps, torch.zeros(1, 3), torch.ones(1, 3), epsilon_low=10.0, epsilon_high=10.0,
                                   sequence_level_ratio=True, mask=mask)
    assert ratio.shape == (1, 1) and ratio.item() == pytest.approx(1.0)


def test_aggregate_loss_types_by_hand():
    loss = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the third answer got no feedback: all masked
    # grpo: answer means 2 and 2, summed; the normaliser counts answers with feedback only (2 here).
    assert loss_normalizer("grpo", answers=2, tokens=3, max_completion_length=3) == 2.0
    assert aggregate_loss(loss, mask, loss_type="grpo", normalizer=2.0).item() == pytest.approx((2.0 + 2.0) / 2)
    # dapo: token sum 6 over 3 tokens; dr_grpo: 6 over 2 answers x 4 tokens.
    assert loss_normalizer("dapo", answers=2, tokens=3, max_completion_length=4) == 3.0
    assert aggregate_loss(loss, mask, loss_type="dapo", normalizer=3.0).item() == pytest.approx(2.0)
    assert loss_normalizer("dr_grpo", answers=2, tokens=3, max_completion_length=4) == 8.0
    assert aggregate_loss(loss, mask, loss_type="dr_grpo", normalizer=8.0).item() == pytest.approx(6.0 / 8)
    assert loss_normalizer("grpo", answers=0, tokens=0, max_completion_length=4) == 1.0  # no feedback: no 0/0
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(loss, mask, loss_type="bnpo", normalizer=1.0)
    with pytest.raises(ValueError, match="loss_type"):
        loss_normalizer("bogus", answers=1, tokens=1, max_completion_length=1)


def test_micro_batch_normalizer_by_hand():
    # 12 answers with feedback in a generation batch of 4 micro-batches on each of 3 processes, 2 micro-batches per
    # optimizer step: each micro-batch divides by 12 * 2 / (4 * 3) = 2. Summed over 2 micro-batches and averaged
    # over 3 processes, a step's gradient is its loss sum / 2 / 3 = sum / 6: the step holds half the generation
    # batch, 6 of its 12 answers.
    assert micro_batch_normalizer(
        12.0, steps_per_generation=4, gradient_accumulation_steps=2, num_processes=3
    ) == 2.0
    assert micro_batch_normalizer(12.0, steps_per_generation=2, gradient_accumulation_steps=2, num_processes=1) == 12.0


def _fake_tokens(text):
    return len(text.split())


def test_fit_request_cuts_only_the_request():
    render = lambda request: f"SYS {request} FEEDBACK o1 o2"  # noqa: E731
    drop = lambda request, n: " ".join(request.split()[:-n])  # noqa: E731
    request = "w1 w2 w3 w4 w5 w6"
    assert fit_request(request, render, _fake_tokens, None, drop) == (render(request), False)
    assert fit_request(request, render, _fake_tokens, 10, drop) == (render(request), False)
    text, cut = fit_request(request, render, _fake_tokens, 7, drop)
    assert cut and text == "SYS w1 w2 w3 FEEDBACK o1 o2"
    with pytest.raises(ValueError, match="even with the request removed"):
        fit_request(request, render, _fake_tokens, 3, drop)


def test_config_accepts_a_group_of_one_and_keeps_trl_checks(tmp_path):
    config = OnlineSDPOConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=3, report_to=[])
    assert config.num_generations == 1
    assert config.loss_type == "grpo"  # the paper's per-answer mean
    assert config.steps_per_generation == config.gradient_accumulation_steps
    assert config.chat_template_kwargs == {"enable_thinking": False}
    assert config.max_teacher_prompt_length == config.max_prompt_length + 512
    with pytest.raises(ValueError, match="divisible by num_generations"):
        OnlineSDPOConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=3, num_generations=2, report_to=[])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_generations": 0}, "num_generations must be >= 1"),
        ({"advantage_baseline": "leave_one_out"}, "needs num_generations >= 2"),
        ({"advantage_baseline": "mean"}, "choose one of sequence_mean, leave_one_out, none"),
        ({"hindsight_template": "no placeholder"}, "must contain the placeholder"),
        ({"hindsight_template": "{feedback} {other}"}, "only the placeholder"),
        ({"use_liger_loss": True}, "use_liger_loss is not supported"),
        ({"token_log_samples": -1}, "token_log_samples"),
        ({"loss_type": "bnpo"}, "depends on how a step is split"),
        ({"loss_type": "sapo"}, "choose one of grpo, dapo, dr_grpo"),
    ],
)
def test_config_rejects_bad_settings(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnlineSDPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[], **kwargs)


def test_config_defaults_to_full_precision_without_a_gpu(tmp_path):
    assert not torch.cuda.is_available()  # CI and this machine have no GPU
    assert OnlineSDPOConfig(output_dir=str(tmp_path), report_to=[]).bf16 is False
    with pytest.raises(ValueError, match="bf16"):
        OnlineSDPOConfig(output_dir=str(tmp_path), report_to=[], bf16=True)


def test_config_parses_template_kwargs_from_json(tmp_path):
    config = OnlineSDPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[], chat_template_kwargs='{"enable_thinking": true}')
    assert config.chat_template_kwargs == {"enable_thinking": True}


def test_several_processes_without_a_gpu_train_together():
    # (use_cpu, GPU, processes): only several processes on a machine without a GPU need it turned on.
    assert cpu_processes_need_use_cpu(False, False, 2)
    assert not cpu_processes_need_use_cpu(True, False, 2)
    assert not cpu_processes_need_use_cpu(False, True, 4)
    assert not cpu_processes_need_use_cpu(False, False, 1)


def test_signal_clip_is_symmetric_and_off_by_default():
    signal = torch.tensor([[-3.0, -0.5, 0.25, 4.0]])
    assert clip_signal(signal, None) is signal
    assert clip_signal(signal, 1.0).tolist() == [[-1.0, -0.5, 0.25, 1.0]]


SETTINGS = ObjectiveSettings(advantage_baseline="none", signal_clip=None, epsilon_low=0.2, epsilon_high=0.2,
                             delta=None, sequence_level_ratio=False)


def test_sampled_token_without_a_behaviour_policy_is_the_signal_weighted_log_likelihood():
    """On-policy answers and logged answers: loss -A*logp, gradient -A, and no importance ratio to clip."""
    student = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    teacher = torch.tensor([[-0.5, -2.5, -0.5]])
    mask = torch.tensor([[1, 1, 0]])
    result = sampled_token(student_logps=student, teacher_logps=teacher, reference_logps=student.detach(),
                           behaviour_logps=None, mask=mask, has_feedback=torch.tensor([True]),
                           sequence_baseline=None, settings=SETTINGS)
    # signal = teacher - student = (0.5, -0.5, 0); the padded third token gets advantage 0
    assert result.token_values.tolist() == [[0.5, -0.5, 0.0]]
    assert result.advantages.tolist() == [[0.5, -0.5, 0.0]]
    assert result.ratio is None
    assert result.per_token_loss.tolist()[0] == pytest.approx([0.5 * 1.0, -0.5 * 2.0, 0.0])
    result.per_token_loss.sum().backward()
    assert student.grad.tolist() == [[-0.5, 0.5, 0.0]]


def test_sampled_token_with_a_behaviour_policy_is_ppo_and_matches_it_at_ratio_one():
    student = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    kwargs = dict(teacher_logps=torch.tensor([[0.0, -1.0]]), reference_logps=torch.tensor([[-1.0, -2.0]]),
                  mask=torch.tensor([[1, 1]]), has_feedback=torch.tensor([True]), sequence_baseline=None,
                  settings=SETTINGS)
    ppo = sampled_token(student_logps=student, behaviour_logps=torch.tensor([[-1.0, -2.0]]), **kwargs)
    plain = sampled_token(student_logps=student, behaviour_logps=None, **kwargs)
    assert ppo.ratio.tolist() == [[1.0, 1.0]]
    (ppo_grad,) = torch.autograd.grad(ppo.per_token_loss.sum(), student)
    (plain_grad,) = torch.autograd.grad(plain.per_token_loss.sum(), student)
    assert ppo_grad.tolist() == plain_grad.tolist() == [[-1.0, -1.0]]
    # far from the behaviour policy, the clip bites: ratio e^1 > 1.2 with a positive advantage -> loss -1.2 * A
    far = sampled_token(student_logps=torch.tensor([[0.0, -1.0]]), behaviour_logps=torch.tensor([[-1.0, -2.0]]),
                        **kwargs)
    assert far.per_token_loss.tolist()[0] == pytest.approx([-1.2, -1.2])


def test_signal_clip_applies_before_the_baseline():
    settings = ObjectiveSettings(advantage_baseline="sequence_mean", signal_clip=1.0, epsilon_low=0.2,
                                 epsilon_high=0.2, delta=None, sequence_level_ratio=False)
    result = sampled_token(student_logps=torch.zeros(1, 2), teacher_logps=torch.tensor([[3.0, -1.0]]),
                           reference_logps=torch.zeros(1, 2), behaviour_logps=None, mask=torch.ones(1, 2),
                           has_feedback=torch.tensor([True]), sequence_baseline=None, settings=settings)
    # clipped signal (1, -1), its mean 0: advantages (1, -1), not (2, -2) as the unclipped signal would give
    assert result.advantages.tolist() == [[1.0, -1.0]]


def test_an_unknown_objective_lists_the_choices():
    assert get_objective("sampled_token") is OBJECTIVES["sampled_token"]
    with pytest.raises(ValueError, match="choose one of sampled_token, topk_logits, full_logits"):
        get_objective("topk")


def test_config_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ValueError) as err:
        OnlineSDPOConfig(output_dir=str(tmp_path), loss_type="bnpo", advantage_baseline="median",
                         distillation_mode="nope", teacher_model_kind="oracle", token_log_samples=-1,
                         signal_clip=0.0, report_to=[])
    message = str(err.value)
    for expected in ("loss_type 'bnpo'", "advantage_baseline 'median'", "distillation_mode 'nope'",
                     "teacher_model_kind 'oracle'", "token_log_samples must be >= 0", "signal_clip must be > 0"):
        assert expected in message


def test_the_distillation_options_are_checked_with_every_other_problem(tmp_path):
    with pytest.raises(ValueError) as err:
        OnlineSDPOConfig(output_dir=str(tmp_path), distillation_alpha=0.5, distillation_is_clip=2.0,
                         teacher_update_rate=0.0, teacher_sync_steps=0, distillation_topk=0, report_to=[])
    message = str(err.value)
    for expected in ("distillation_alpha must be 1 with sampled_token", "distillation_is_clip applies to topk_logits",
                     "teacher_update_rate must be in (0, 1]", "teacher_sync_steps must be >= 1",
                     "distillation_topk must be >= 1"):
        assert expected in message
    with pytest.raises(ValueError) as err:
        OnlineSDPOConfig(output_dir=str(tmp_path), distillation_mode="full_logits", distillation_alpha=1.5,
                         signal_clip=1.0, advantage_baseline="leave_one_out", num_generations=2, report_to=[])
    for expected in ("distillation_alpha must be in [0, 1]", "signal_clip clips the sampled-token signal",
                     "leave_one_out needs sampled_token"):
        assert expected in str(err.value)
    config = OnlineSDPOConfig(output_dir=str(tmp_path), distillation_mode="topk_logits", distillation_alpha=0.0,
                              distillation_is_clip=2.0, teacher_model_kind="ema", report_to=[])
    assert (config.distillation_topk, config.distillation_add_tail, config.teacher_update_rate) == (50, True, 0.05)


def test_the_objectives_declare_what_they_need():
    assert {name: OBJECTIVES[name].needs for name in OBJECTIVES} == {
        "sampled_token": "logps", "topk_logits": "logits", "full_logits": "logits"}
    assert all((entry.needs == "logits") == (entry.token_divergence is not None) for entry in OBJECTIVES.values())
