"""Self-Distillation Policy Optimization (SDPO) from user interactions, on TRL's GRPOTrainer.

One training sample flows top to bottom:

    prompt x -> answer y (sampled by the policy online, logged offline) -> the user's next message o
    -> hindsight context (x with o appended to the last user turn) -> teacher log-probs (no grad, teacher.py)
    -> student log-probs (the grad pass of the loss) -> the objective (objectives.py) -> the step's loss

`SDPOTrainerCore` holds everything from the answers onwards; `OnlineSDPOTrainer` (here) and `OfflineSDPOTrainer`
(offline.py) differ only in where y and o come from. In the on-policy default only two scoring passes run per
sample: the teacher pass at generation time and the student pass with gradient inside the loss, whose detached
values are the student term of the signal.
"""

from __future__ import annotations

import abc
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from accelerate.utils import gather_object
from transformers.trainer_callback import ProgressCallback
from trl import GRPOTrainer
from trl.data_utils import is_conversational

from sdpo_interactions.core.batch import Answers, SDPOBatch, pad_rows
from sdpo_interactions.core.callbacks import GracefulStop, LogFirstAndLastStep, RunSettingsWriter, StepSummaryProgress
from sdpo_interactions.core.config import OnlineSDPOConfig
from sdpo_interactions.core.hindsight import ChatContexts
from sdpo_interactions.core.loss import MicroBatchLoss
from sdpo_interactions.core.maths import (
    aggregate_loss,
    first_tokens_mask,
    leave_one_out_baseline,
    loss_normalizer,
    masked_mean,
    micro_batch_normalizer,
)
from sdpo_interactions.core.metrics import SDPOMetrics
from sdpo_interactions.core.objectives import value_label
from sdpo_interactions.core.persona_schedule import PersonaScheduleCallback
from sdpo_interactions.core.run_record import RunRecord
from sdpo_interactions.core.sampler import EpochSeededRepeatSampler
from sdpo_interactions.core.scoring import HindsightScorer
from sdpo_interactions.core.specificity import SpecificityWatch
from sdpo_interactions.core.teacher import build_teacher, parameter_sharding
from sdpo_interactions.core.teacher_sync import TeacherSync
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME, TokenLog, token_records
from sdpo_interactions.precision import install_precision
from sdpo_interactions.prompts import last_user_text
from sdpo_interactions.run_files import rotate_checkpoints
from sdpo_interactions.sampling import Sampling, model_defaults_ignored
from sdpo_interactions.users.base import UserSimulator, UserSimulatorError
from sdpo_interactions.users.style_schedule import StyleSchedule

logger = logging.getLogger(__name__)

# The config fields the run settings record: what an evaluation reads back, and whether a resume can be exact.
RECORDED_ARGS = ("hindsight_template", "chat_template_kwargs", "advantage_baseline", "distillation_mode",
                 "teacher_model_kind", "signal_clip", "ignore_first_tokens", "loss_type", "num_generations",
                 "max_prompt_length", "max_completion_length", "temperature", "save_only_model",
                 "distillation_topk", "distillation_add_tail", "distillation_alpha", "distillation_is_clip",
                 "teacher_update_rate", "teacher_sync_steps")


class SDPOTrainerCore(GRPOTrainer, metaclass=abc.ABCMeta):
    """SDPO from the answers onwards: hindsight contexts, teacher pass, objective, loss reduction, metrics, token
    log, run settings and resume. Subclasses say where the answers and the feedback come from."""

    config_class: ClassVar[type] = OnlineSDPOConfig
    # Whether y was sampled by the policy being trained. Then the old log-probs of a reused generation batch are its
    # behaviour policy, and PPO's clip applies; logged answers have no known behaviour policy.
    answers_from_policy: ClassVar[bool] = True

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 reward_funcs=None, callbacks=None, optimizers=(None, None), peft_config=None,
                 run_settings: Optional[dict] = None):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = self.config_class(f"{name.split('/')[-1]}-SDPO")
        if not isinstance(args, self.config_class):
            raise TypeError(f"args must be an {self.config_class.__name__}, got {type(args).__name__}")
        super().__init__(model=model, reward_funcs=list(reward_funcs or []), args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers, peft_config=peft_config)
        self.contexts = ChatContexts(self.tokenizer, chat_template_kwargs=args.chat_template_kwargs,
                                     hindsight_template=args.hindsight_template,
                                     max_teacher_prompt_length=args.max_teacher_prompt_length)
        self.teacher = build_teacher(args.teacher_model_kind, lambda: self.model, self.score_logps,
                                     unwrap=self.accelerator.unwrap_model, update_rate=args.teacher_update_rate,
                                     sharded=parameter_sharding(self.accelerator))
        self.scorer = HindsightScorer(self.contexts, self.teacher, self._pad)
        self.micro_batch_loss = MicroBatchLoss.for_trainer(self)  # the objective, and what it needs prepared
        self.value_label = value_label(args.distillation_mode, self.micro_batch_loss.settings)
        self.sdpo_metrics = SDPOMetrics(self.accelerator, self._metrics, self.micro_batch_loss.settings)
        self.specificity_watch = SpecificityWatch(args.specificity_min, args.specificity_warn_after)
        self.token_log = TokenLog(Path(args.output_dir) / TOKEN_LOG_NAME, args.token_log_samples)
        self.run_settings = dict(run_settings or {})
        self.record = RunRecord(args.output_dir, self.sdpo_settings, self.token_log, self.accelerator)
        self.graceful_stop = GracefulStop(self.accelerator)
        self.teacher_sync = TeacherSync(self.teacher, args.teacher_sync_steps)
        for callback in (self.teacher_sync, self.graceful_stop, RunSettingsWriter(self.sdpo_settings), LogFirstAndLastStep()):
            self.add_callback(callback)
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(StepSummaryProgress())
        install_precision(self)  # the optimizer the recipes ask for, the bf16 update check and its metric

    @property
    def tokenizer(self):
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    def _get_train_sampler(self, dataset=None) -> EpochSeededRepeatSampler:
        """GRPOTrainer's sampler (same grouping and repeats), with a data order a resumed run can replay."""
        return EpochSeededRepeatSampler.for_trainer(self.train_dataset if dataset is None else dataset, self.args,
                                                    shuffle=self.shuffle_dataset)

    # -- where y and o come from -------------------------------------------------------------------------------

    @abc.abstractmethod
    def _answers_and_feedback(self, inputs: list[dict[str, Any]]
                              ) -> tuple[list[list[dict[str, str]]], Answers, list[str], Optional[float]]:
        """Steps 1 and 2: (prompt messages, the answers, the user's next messages, seconds spent waiting for the
        user, or None when no user was asked)."""

    @abc.abstractmethod
    def feedback_source_settings(self) -> dict:
        """Who wrote the feedback, for the run settings (secret-free)."""

    def feedback_style(self) -> Optional[str]:
        """The persona writing the feedback of the batch being built (None: logged users, no persona)."""
        return None

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        with self.record.user_failure_shared():
            messages, answers, feedback, seconds = self._answers_and_feedback(inputs)
        batch = self._score_with_feedback(inputs, messages, answers, feedback, seconds)
        return batch.to_trl()

    def _fixed_answers(self, messages: list[list[dict[str, str]]], completions: list[str]) -> Answers:
        """Answers given as text (logged, or chosen for analysis), EOS appended so that ending them is scored too."""
        student_texts = [self.contexts.render(m) for m in messages]
        prompt_ids, prompt_mask = self._pad(self.contexts.token_ids(student_texts), "left")
        answer_ids = self.contexts.token_ids([c + self.tokenizer.eos_token for c in completions])
        completion_ids, completion_mask = self._pad(answer_ids, "right")
        return Answers(prompt_ids, prompt_mask, completion_ids, completion_mask, answer_ids, list(completions),
                       student_texts)

    # -- steps 3 to 5: hindsight contexts, teacher pass, extra passes, metrics --------------------------------

    def _score_with_feedback(self, inputs, messages, answers: Answers, feedback: list[str],
                             simulator_seconds: Optional[float]) -> SDPOBatch:
        mode = "train" if self.model.training else "eval"
        batch, shortened, teacher_lengths = self._hindsight_batch(messages, answers, feedback)
        if mode == "train":
            self.record.count(batch.has_feedback)
        self._add_extra_passes(batch, answers.sampling_logps)
        if self.reward_funcs:
            conversational = [[{"role": "assistant", "content": c}] for c in answers.completion_text]
            rewards = self._calculate_rewards(inputs, messages, conversational, answers.completion_ids_list)
            self.sdpo_metrics.rewards(mode, rewards, self.reward_func_names)
        self.sdpo_metrics.generation(
            mode, feedback_tokens=[self.contexts.count_tokens(o) for o in feedback], has_feedback=batch.has_feedback,
            shortened=shortened, teacher_lengths=teacher_lengths, simulator_seconds=simulator_seconds,
            simulator_metrics=self._simulator_metrics(),
        )
        return batch

    def _hindsight_batch(self, messages, answers: Answers, feedback: list[str]
                         ) -> tuple[SDPOBatch, list[bool], torch.Tensor]:
        """The batch after the teacher pass, with which contexts were shortened and their lengths (B,)."""
        device = self.accelerator.device
        has_feedback = torch.tensor([bool(o.strip()) for o in feedback], device=device)
        teacher_texts, shortened = zip(*(self.contexts.teacher_context(m, o) for m, o in zip(messages, feedback)))
        teacher_ids = teacher_mask = teacher_logps = None
        at_loss_time = self.micro_batch_loss.objective.needs == "logits"  # the loss runs the teacher on the contexts
        if at_loss_time:
            teacher_ids, teacher_mask = self.scorer.context_ids(list(teacher_texts))
            teacher_lengths = teacher_mask.sum(dim=1)
        if not at_loss_time or not self.model.training:  # evaluation and score_signal read them here
            teacher_logps, teacher_lengths = self.scorer.teacher_pass(list(teacher_texts), answers.completion_ids,
                                                                      answers.completion_mask)
        # At logging steps in training, a few answers are scored again under another sample's feedback.
        due = self.model.training and self.state.global_step % max(int(self.args.logging_steps), 1) == 0
        strangers, unrelated = self.scorer.stranger_pass(
            messages, feedback, has_feedback.tolist(), answers.completion_ids, answers.completion_mask,
            teacher_logps, limit=self.args.specificity_samples if due else 0,
        )
        batch = SDPOBatch(
            prompt_ids=answers.prompt_ids, prompt_mask=answers.prompt_mask, completion_ids=answers.completion_ids,
            completion_mask=answers.completion_mask, teacher_logps=teacher_logps, has_feedback=has_feedback,
            loss_normalizer=self._loss_normalizer(answers.completion_mask, has_feedback),
            generation_step=torch.full((len(messages),), self.state.global_step, device=device),
            request_text=[last_user_text(m) for m in messages], completion_text=answers.completion_text,
            feedback_text=list(feedback), feedback_style=[self.feedback_style()] * len(messages),
            student_context=answers.student_context,
            teacher_context=list(teacher_texts), stranger_feedback=strangers, unrelated_teacher_logps=unrelated,
            teacher_ids=teacher_ids, teacher_mask=teacher_mask,
        )
        return batch, list(shortened), teacher_lengths

    def _simulator_metrics(self) -> dict:
        return {}

    @torch.no_grad()
    def score_logps(self, model, context_ids, context_mask, completion_ids, completion_mask) -> torch.Tensor:
        """log p(y_t | context, y_<t) (B, T) without gradient, through TRL's log-prob helper in chunks of the
        micro-batch size, so the largest logits tensor is one chunk's."""
        chunk = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        logps, _ = self._get_per_token_logps_and_entropies(
            model, torch.cat([context_ids, completion_ids], dim=1), torch.cat([context_mask, completion_mask], dim=1),
            completion_ids.size(1), chunk,
        )
        return logps

    def _add_extra_passes(self, batch: SDPOBatch, sampling_logps) -> None:
        """Old log-probs for off-policy reuse, vLLM's correction or the leave-one-out baseline; reference log-probs
        for the KL penalty. The on-policy default needs none of them."""
        context = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
        generate_every = self.args.steps_per_generation * self.num_iterations
        vllm_correction = self.use_vllm and self.vllm_importance_sampling_correction
        leave_one_out = self.args.advantage_baseline == "leave_one_out"
        if self.args.gradient_accumulation_steps % generate_every != 0 or vllm_correction or leave_one_out:
            batch.old_logps = self.score_logps(self.model, *context)
        if vllm_correction:
            sampling, _ = self._pad(sampling_logps, "right", dtype=torch.float32)
            batch.importance_sampling_ratio = torch.clamp(torch.exp(batch.old_logps - sampling),
                                                          max=self.vllm_importance_sampling_cap)
        if leave_one_out:
            scores = masked_mean(batch.teacher_logps - batch.old_logps, batch.completion_mask, dim=1)
            gather = self.accelerator.gather
            baseline = leave_one_out_baseline(gather(scores), gather(batch.has_feedback.float()),
                                              group_size=self.num_generations)
            start = self.accelerator.process_index * len(scores)
            batch.sequence_baseline = baseline[start: start + len(scores)]
        if self.beta != 0.0:
            batch.ref_logps = self._reference_logps(*context)

    def _reference_logps(self, *context: torch.Tensor) -> torch.Tensor:
        if self.ref_model is None:  # PEFT: the reference is the base model, adapter disabled
            with self.accelerator.unwrap_model(self.model).disable_adapter():
                return self.score_logps(self.model, *context)
        return self.score_logps(self.ref_model, *context)

    def _loss_mask(self, completion_mask: torch.Tensor, has_feedback: torch.Tensor) -> torch.Tensor:
        """The tokens the loss averages over (B, T): answers without feedback are left out entirely, the KL term
        too, and so are each answer's first `ignore_first_tokens` tokens."""
        return first_tokens_mask(completion_mask * has_feedback.long().unsqueeze(1), self.args.ignore_first_tokens)

    def _loss_normalizer(self, completion_mask: torch.Tensor, has_feedback: torch.Tensor) -> torch.Tensor:
        """This generation batch's `loss_normalizer`, counted over all processes in training (in evaluation the
        batch is neither split nor accumulated, and each process's loss is averaged afterwards: local counts serve)."""
        counted = self._loss_mask(completion_mask, has_feedback)
        counts = torch.stack([(counted.sum(dim=1) > 0).sum(), counted.sum()]).float()
        if self.model.training:
            counts = self.accelerator.reduce(counts, reduction="sum")
        normalizer = loss_normalizer(self.loss_type, answers=counts[0].item(), tokens=counts[1].item(),
                                     max_completion_length=self.max_completion_length)
        return torch.tensor(normalizer, device=completion_mask.device)

    def _pad(self, rows, side: str, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        value = 0.0 if dtype is not None and dtype.is_floating_point else self.pad_token_id
        return pad_rows(rows, side, pad_value=value, device=self.accelerator.device, dtype=dtype)

    # -- step 6: the loss --------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        batch = SDPOBatch.from_trl(inputs)
        mode = "train" if self.model.training else "eval"
        parts = self.micro_batch_loss(model, batch)
        normalizer = batch.loss_normalizer
        if self.model.training:
            normalizer = micro_batch_normalizer(
                normalizer, steps_per_generation=self.args.steps_per_generation,
                gradient_accumulation_steps=self.current_gradient_accumulation_steps,
                num_processes=self.accelerator.num_processes,
            )
        loss = aggregate_loss(parts.per_token_loss, self._loss_mask(batch.completion_mask, batch.has_feedback),
                              loss_type=self.loss_type, normalizer=normalizer)
        self.sdpo_metrics.loss(mode, batch, parts.result, parts.reference, parts.entropies)
        self.sdpo_metrics.kl(mode, parts.per_token_kl, batch.completion_mask)
        if mode == "train" and self.args.token_log_samples > 0:
            self.token_log.collect(lambda n: token_records(
                batch, parts.reference, parts.result.signal, self.tokenizer.batch_decode,
                mode=self.args.distillation_mode, label=self.value_label, values=parts.result.token_values)[:n],
                gather_object)
        return loss

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        super().log(logs, start_time)
        self.token_log.flush(write=self.accelerator.is_main_process)
        self.specificity_watch.observe(logs.get("sdpo/feedback_specificity"))

    # -- run files, resume, the end of a run -------------------------------------------------------------------

    def sdpo_settings(self) -> dict:
        """What an evaluation needs to reproduce this run's prompts, sampling and user, and what a resume checks a
        checkpoint against (save_only_model; world_size, whose RNG files it holds); contains no secret."""
        return {
            **self.feedback_source_settings(),
            **self.run_settings,
            "model_name_or_path": self.model.config._name_or_path,
            **{name: getattr(self.args, name) for name in RECORDED_ARGS},
            "world_size": self.accelerator.num_processes,
            "interactions": dict(self.record.interactions),
            "global_step": self.state.global_step,
        }

    def train(self, resume_from_checkpoint=None, **kwargs):
        """With the run record around it: the resume's checks and trims, a checkpoint first when the user fails."""
        resume = self.record.start(resume_from_checkpoint, self.model, self.args, self.train_dataset)
        self.teacher_sync.restore(resume)
        try:
            return super().train(resume_from_checkpoint=resume, **kwargs)
        except UserSimulatorError:
            self.graceful_stop.restore_rng_at_step_end()
            self.record.save_before_abort(self.state.global_step, partial(self._save_checkpoint, self.model, None))
            raise
        finally:
            self.graceful_stop.release()

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False):
        """The policy's weights, and beside them a teacher's own (EMA), which a resume from a checkpoint needs."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.teacher_sync.save(output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):
        """transformers' save, then the completeness mark, then the rotation (RunRecord.save_checkpoint's order)."""
        self.record.save_checkpoint(partial(super()._save_checkpoint, model, trial), self._get_output_dir(trial=trial),
                                    self.state.global_step, self._rotate_checkpoints)

    def _rotate_checkpoints(self, use_mtime=False, output_dir=None) -> None:
        """Not inside transformers' save, which calls it before the new checkpoint is marked complete."""
        if not self.record.saving and (self.args.save_total_limit or 0) > 0:
            rotate_checkpoints(output_dir, self.args.save_total_limit, protect=self.state.best_model_checkpoint)

    def score_signal(self, prompts: list[list[dict[str, str]]], completions: list[str], feedbacks: list[str]
                     ) -> list[dict]:
        """Token-log records for given (prompt, answer, follow-up) triples, scored with the training code path.

        Used to inspect the signal (for instance a relevant against an unrelated follow-up) without training.
        """
        if not (len(prompts) == len(completions) == len(feedbacks)):
            raise ValueError("prompts, completions and feedbacks must have the same length")
        answers = self._fixed_answers(prompts, completions)
        was_training = self.model.training
        self.model.eval()
        try:
            batch, _, _ = self._hindsight_batch(prompts, answers, list(feedbacks))
            student = self.score_logps(self.model, answers.prompt_ids, answers.prompt_mask, answers.completion_ids,
                                       answers.completion_mask)
        finally:
            self.model.train(was_training)
        return token_records(batch, student, batch.teacher_logps - student, self.tokenizer.batch_decode)


class OnlineSDPOTrainer(SDPOTrainerCore):
    """GRPOTrainer whose advantage is the per-token hindsight log-ratio given by a simulated user's reply.

    Takes what GRPOTrainer takes plus `user_simulator`. No reward function is needed: `reward_funcs`, if given,
    are computed and logged for monitoring only. `user_simulator` may be None when the trainer is only used to
    score signals (`score_signal`), never to train.
    """

    _tag_names = ["trl", "sdpo", "online-sdpo"]

    def __init__(self, model, user_simulator: Optional[UserSimulator] = None, args: Optional[OnlineSDPOConfig] = None,
                 train_dataset=None, eval_dataset=None, processing_class=None, reward_funcs=None, callbacks=None,
                 optimizers=(None, None), peft_config=None, run_settings: Optional[dict] = None,
                 style_schedule: Optional[StyleSchedule] = None):
        if user_simulator is not None and not callable(getattr(user_simulator, "generate_feedback", None)):
            raise TypeError(
                f"user_simulator ({type(user_simulator).__name__}) has no generate_feedback(prompts, completions) "
                "method; subclass sdpo_interactions.UserSimulator, whose docstring lists what a simulator provides"
            )
        self.user_simulator = user_simulator
        self.style_schedule = style_schedule  # the user's persona by step (users/style_schedule.py), or None
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, reward_funcs=reward_funcs, callbacks=callbacks,
                         optimizers=optimizers, peft_config=peft_config, run_settings=run_settings)
        if style_schedule is not None:
            self.add_callback(PersonaScheduleCallback(style_schedule, user_simulator))

    def _answers_and_feedback(self, inputs):
        if self.user_simulator is None:
            raise ValueError("OnlineSDPOTrainer needs a user_simulator to train or evaluate")
        if not is_conversational(inputs[0]) or "image" in inputs[0] or "images" in inputs[0]:
            raise ValueError("OnlineSDPOTrainer takes text-only conversational prompts: a `prompt` column of messages")
        messages = [x["prompt"] for x in inputs]
        answers = self._generate_answers(messages)  # 1. generation, through TRL's own paths
        start = time.perf_counter()  # 2. the user's reply to each (request, answer), for this process's samples
        feedback = list(self.user_simulator.generate_feedback([last_user_text(m) for m in messages],
                                                              answers.completion_text))
        if len(feedback) != len(messages):
            raise RuntimeError(f"user simulator returned {len(feedback)} replies for {len(messages)} samples")
        return messages, answers, feedback, time.perf_counter() - start

    def _generate_answers(self, messages: list[list[dict[str, str]]]) -> Answers:
        """y for each prompt: rendered here so the chat template kwargs apply, sampled by TRL's `_generate`."""
        student_texts = [self.contexts.render(m) for m in messages]
        prompt_ids_list, completion_ids_list, _, sampling_logps, _ = self._generate(student_texts, None)
        prompt_ids, prompt_mask = self._pad(prompt_ids_list, "left")
        completion_ids, completion_mask = self._pad(completion_ids_list, "right")
        if self.mask_truncated_completions:
            ended = [ids[-1] in (self.eos_token_id, self.pad_token_id) for ids in completion_ids_list]
            completion_mask = completion_mask * torch.tensor(ended, device=completion_mask.device).unsqueeze(1).long()
        return Answers(
            prompt_ids, prompt_mask, completion_ids, completion_mask, completion_ids_list,
            completion_text=self.tokenizer.batch_decode(completion_ids_list, skip_special_tokens=True),
            student_context=self.tokenizer.batch_decode(prompt_ids_list),  # exactly what y follows, after truncation
            sampling_logps=sampling_logps,
        )

    def _generate(self, prompts, images):
        """TRL's generation, with the model folder's sampling defaults kept out (see sampling.py).

        TRL switches gradient checkpointing off to generate and back on with the library's defaults, which drops
        `gradient_checkpointing_kwargs` (reentrant checkpointing again, and its false alarm in the no-grad teacher
        pass): it is switched on again here as configured.
        """
        model = self.accelerator.unwrap_model(self.model)
        with model_defaults_ignored(model):
            generated = super()._generate(prompts, images)
        if self.args.gradient_checkpointing and model.is_gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
        return generated

    def policy_sampling(self) -> dict:
        """The sampling the policy's answers are drawn with: exactly these values, on every generation backend."""
        if self.use_vllm:
            backend = f"vllm-{self.vllm_mode}"
        else:
            backend = "transformers-paged" if self.use_transformers_paged else "transformers"
        sampling = Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0, min_p=self.min_p,
                            repetition_penalty=self.repetition_penalty)
        return {"backend": backend, **sampling.as_dict(), "generation_kwargs": self.args.generation_kwargs}

    def feedback_style(self) -> Optional[str]:
        return getattr(self.user_simulator, "style", None)

    def _simulator_metrics(self) -> dict:
        pop = getattr(self.user_simulator, "pop_metrics", None)
        return pop() if pop is not None else {}

    def feedback_source_settings(self) -> dict:
        """The persona is stored as text, so a later evaluation judges with the user this run trained with even if
        the persona file has changed since."""
        user = self.user_simulator
        return {
            "style": getattr(user, "style", None),
            "persona": getattr(user, "persona", None),
            "user_simulator": user.settings() if user is not None and hasattr(user, "settings") else None,
            "sampling": self.policy_sampling(),
            "style_schedule": None if self.style_schedule is None else self.style_schedule.settings(
                step=self.state.global_step, answers=self.record.interactions["answers"]),
        }

    def train(self, resume_from_checkpoint=None, **kwargs):
        if self.user_simulator is None:
            raise ValueError("OnlineSDPOTrainer.train needs a user_simulator")
        logger.info("Policy sampling (exactly, whatever the model's generation_config.json says): %s",
                    json.dumps(self.policy_sampling()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
