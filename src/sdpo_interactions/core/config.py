"""The SDPO settings: GRPOConfig (so every TRL generation, vLLM and optimisation flag keeps its TRL name) plus the
hindsight signal's own. Defaults follow the paper's online runs; `OfflineSDPOConfig` holds the authors' offline ones.
Every problem with a configuration is reported at once, before any model loads."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from trl import GRPOConfig

from sdpo_interactions.core.hindsight import DEFAULT_HINDSIGHT_TEMPLATE, template_problems
from sdpo_interactions.core.maths import ADVANTAGE_BASELINES, LOSS_TYPES
from sdpo_interactions.core.objectives import LOGIT_MODES, OBJECTIVES
from sdpo_interactions.core.teacher import TEACHERS
from sdpo_interactions.core.token_log import TOKEN_LOG_NAME

logger = logging.getLogger(__name__)


def cpu_processes_need_use_cpu(use_cpu: bool, cuda_available: bool, world_size: int) -> bool:
    """Whether a launch must turn `use_cpu` on: without it, TrainingArguments sets up no process group on a machine
    without a GPU, and each of several processes would train alone on the same samples. With it they join over gloo.
    """
    return not use_cpu and not cuda_available and world_size > 1


@dataclass
class OnlineSDPOConfig(GRPOConfig):
    """GRPOConfig plus the settings of SDPO's hindsight signal. Defaults follow the paper's online runs."""

    num_generations: Optional[int] = field(
        default=1,
        metadata={
            "help": "Completions per prompt. SDPO's signal is per sample, so 1 (the paper's setting) is valid; with "
            "more, `advantage_baseline=leave_one_out` can use the other answers to the same prompt."
        },
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "How token losses are averaged over one optimizer step: `grpo` (the mean of each answer's tokens, "
            "then the mean over answers: the paper's update), `dapo` (the mean over all tokens, so long answers "
            "weigh more) or `dr_grpo` (the token sum over answers x max_completion_length). Only answers with "
            "feedback count, and the result does not depend on how the step is split into micro-batches.",
            "choices": list(LOSS_TYPES),
        },
    )
    distillation_mode: str = field(
        default="sampled_token",
        metadata={"help": "The per-token objective (TRL's name and values): `sampled_token` (the paper's policy "
                          "gradient, the hindsight log-ratio of each sampled token its advantage), `topk_logits` "
                          "(a divergence between the student's and the teacher's next-token distributions over the "
                          "student's top distillation_topk tokens, the authors' newest default) or `full_logits` "
                          "(the same over the whole vocabulary).",
                  "choices": list(OBJECTIVES)},
    )
    distillation_topk: int = field(
        default=50,
        metadata={"help": "k of topk_logits: the support is the student's k most likely tokens at each position "
                          "(the authors' default 50; TRL has none; verl's rich-feedback run uses 20)."},
    )
    distillation_add_tail: bool = field(
        default=True,
        metadata={"help": "topk_logits: add a bucket holding the probability outside the top k (the authors' and "
                          "verl's default; TRL's is false); false renormalises both distributions over the k."},
    )
    distillation_alpha: float = field(
        default=1.0,
        metadata={"help": "The logit modes' divergence: 1 the reverse KL(student || teacher) (the paper's Eq. 2, the "
                          "authors'), 0 the forward KL(teacher || student), in between TRL's generalised "
                          "Jensen-Shannon divergence. sampled_token is the reverse KL's estimator: 1 only."},
    )
    distillation_is_clip: Optional[float] = field(
        default=None,
        metadata={"help": "The logit modes: weight each token's divergence by its importance ratio against the "
                          "policy that sampled y, capped at this value (TRL's one-sided clip; TRL's default 2.0). "
                          "Acts only when a generation batch is reused; unset (the authors') turns it off."},
    )
    distillation_chunk_size: int = field(
        default=256,
        metadata={"help": "The logit modes: answer tokens projected to the vocabulary at once in the loss. Peak "
                          "memory grows with it (about 6 x chunk x vocabulary x 4 bytes), speed a little."},
    )
    teacher_model_kind: str = field(
        default="live",
        metadata={"help": "Who re-scores the answer in hindsight (TRL's name and values): `live` (the policy being "
                          "trained, the paper's), `base` (the initial policy, frozen: free under LoRA, else a copy "
                          "of the weights) or `ema` (a moving average of the policy, saved in checkpoints).",
                  "choices": list(TEACHERS)},
    )
    teacher_update_rate: float = field(
        default=0.05,
        metadata={"help": "ema: teacher <- (1 - rate) teacher + rate student at each update (TRL's default)."},
    )
    teacher_sync_steps: int = field(
        default=1,
        metadata={"help": "ema: update the teacher after every this many optimizer steps (TRL's default)."},
    )
    hindsight_template: str = field(
        default=DEFAULT_HINDSIGHT_TEMPLATE,
        metadata={
            "help": "Block appended to the last user message of the teacher's prompt; `{feedback}` is replaced by the "
            "simulated user's reply. The system prompt is never changed."
        },
    )
    advantage_baseline: str = field(
        default="sequence_mean",
        metadata={
            "help": "What is subtracted from the per-token signal: `sequence_mean` (centre each sequence, the research "
            "code's default), `leave_one_out` (mean signal of the other answers to the same prompt; needs "
            "num_generations >= 2 and one extra scoring pass), or `none`.",
            "choices": list(ADVANTAGE_BASELINES),
        },
    )
    signal_clip: Optional[float] = field(
        default=None,
        metadata={"help": "Clip the per-token signal to [-signal_clip, signal_clip] before the baseline (the authors' "
                          "option; off by default, as in the paper)."},
    )
    ignore_first_tokens: int = field(
        default=0,
        metadata={"help": "Leave the first this many tokens of each answer out of the loss (the authors' "
                          "`ignore_first_k`; their offline runs use 2)."},
    )
    chat_template_kwargs: Optional[Union[dict, str]] = field(
        default_factory=lambda: {"enable_thinking": False},
        metadata={
            "help": "Keyword arguments for the chat template of every prompt the policy sees (student and teacher). "
            "The default turns Qwen3 thinking off. A JSON string is accepted on the command line."
        },
    )
    max_teacher_prompt_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "Longest hindsight (teacher) prompt in tokens. A longer one has its request text cut, never y or o, "
            "and is counted in `hindsight/shortened_frac`. Defaults to max_prompt_length + 512."
        },
    )
    token_log_samples: int = field(
        default=4,
        metadata={
            "help": f"Records appended to <output_dir>/{TOKEN_LOG_NAME} per logging step (0 turns the log off)."
        },
    )
    specificity_samples: int = field(
        default=4,
        metadata={
            "help": "Samples per process scored again at each logging step with another sample's feedback (never "
            "their own), for sdpo/feedback_specificity: is the policy reading its user? 0 turns it off."
        },
    )
    specificity_warn_after: int = field(
        default=5,
        metadata={
            "help": "Warn when sdpo/feedback_specificity stays below specificity_min for this many logging steps in "
            "a row (0: never)."
        },
    )
    specificity_min: float = field(
        default=0.02,
        metadata={"help": "The feedback specificity under which the policy is taken not to read its feedback."},
    )

    def __post_init__(self):
        if isinstance(self.chat_template_kwargs, str):
            self.chat_template_kwargs = json.loads(self.chat_template_kwargs)
        if self.chat_template_kwargs is None:
            self.chat_template_kwargs = {}
        problems = self._sdpo_problems()
        if problems:
            raise ValueError("; ".join(problems))
        self._fit_to_this_machine()
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            # Reentrant checkpointing (TRL's default) runs its bookkeeping even in the no-grad teacher, old and
            # reference passes, and warns there that "None of the inputs have requires_grad=True"; the
            # non-reentrant kind, PyTorch's recommended one, checkpoints nothing without grad.
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        if self.max_teacher_prompt_length is None and self.max_prompt_length is not None:
            self.max_teacher_prompt_length = self.max_prompt_length + 512
        try:
            super().__post_init__()
        except ValueError as err:
            # GRPOConfig's last group check rejects groups of one, which group-normalised rewards need and SDPO's
            # per-sample signal does not; every other check has run by then (use_liger_loss is refused above).
            if self.num_generations != 1 or "at least 2 generations" not in str(err):
                raise

    def _sdpo_problems(self) -> list[str]:
        """Every problem with the SDPO fields, so that one run reports all of them."""
        problems = [*template_problems(self.hindsight_template), *self._choice_problems()]
        if self.num_generations is None or self.num_generations < 1:
            problems.append(f"num_generations must be >= 1, got {self.num_generations}")
        elif self.advantage_baseline == "leave_one_out" and self.num_generations < 2:
            problems.append("advantage_baseline=leave_one_out needs num_generations >= 2")
        if self.use_liger_loss:
            problems.append("use_liger_loss is not supported: the Liger GRPO loss takes one advantage per sequence")
        if self.log_completions:
            problems.append(f"log_completions is not supported; read <output_dir>/{TOKEN_LOG_NAME} instead")
        for name in ("token_log_samples", "specificity_samples", "specificity_warn_after", "ignore_first_tokens"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.signal_clip is not None and self.signal_clip <= 0:
            problems.append(f"signal_clip must be > 0 (or unset), got {self.signal_clip}")
        return problems + self._distillation_problems()

    def _distillation_problems(self) -> list[str]:
        problems = []
        if not 0.0 <= self.distillation_alpha <= 1.0:
            problems.append(f"distillation_alpha must be in [0, 1], got {self.distillation_alpha}")
        for name in ("distillation_topk", "distillation_chunk_size", "teacher_sync_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.distillation_is_clip is not None and self.distillation_is_clip <= 0:
            problems.append(f"distillation_is_clip must be > 0 (or unset), got {self.distillation_is_clip}")
        if not 0.0 < self.teacher_update_rate <= 1.0:
            problems.append(f"teacher_update_rate must be in (0, 1], got {self.teacher_update_rate}")
        if self.distillation_mode == "sampled_token":
            if self.distillation_alpha != 1.0:
                problems.append("distillation_alpha must be 1 with sampled_token, the reverse KL's estimator "
                                "(other values need topk_logits or full_logits)")
            if self.distillation_is_clip is not None:
                problems.append("distillation_is_clip applies to topk_logits and full_logits; sampled_token corrects "
                                "a reused batch with PPO's clip (epsilon, delta)")
        elif self.distillation_mode in LOGIT_MODES:
            if self.signal_clip is not None:
                problems.append(f"signal_clip clips the sampled-token signal; {self.distillation_mode} has none "
                                "(as in the authors' code, where full_distillation ignores it)")
            if self.advantage_baseline == "leave_one_out":
                problems.append(f"advantage_baseline=leave_one_out needs sampled_token; {self.distillation_mode} "
                                "has no advantage to centre")
        return problems

    def _choice_problems(self) -> list[str]:
        problems = []
        if self.loss_type not in LOSS_TYPES:
            hint = (" (bnpo averages the tokens of each micro-batch, so its gradient depends on how a step is split; "
                    "dapo is the same average taken over the whole step)") if self.loss_type == "bnpo" else ""
            problems.append(f"Unknown loss_type {self.loss_type!r}; choose one of {', '.join(LOSS_TYPES)}{hint}")
        for name, choices in (("advantage_baseline", ADVANTAGE_BASELINES), ("distillation_mode", OBJECTIVES),
                              ("teacher_model_kind", TEACHERS)):
            if getattr(self, name) not in choices:
                problems.append(f"Unknown {name} {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        return problems

    def _fit_to_this_machine(self) -> None:
        if self.bf16 is None and not self.fp16 and not self.use_cpu and not torch.cuda.is_available():
            # GRPOConfig turns bf16 on whenever it is unset, which TrainingArguments then refuses on a machine
            # without a GPU; an explicit `bf16: true` (as in the recipes) is still honoured or refused.
            logger.info("No GPU: bf16 is off (pass --bf16 true to force it)")
            self.bf16 = False
        if cpu_processes_need_use_cpu(self.use_cpu, torch.cuda.is_available(), int(os.environ.get("WORLD_SIZE", "1"))):
            logger.info("No GPU under a %s-process launch: use_cpu is on, processes train together over gloo",
                        os.environ["WORLD_SIZE"])
            self.use_cpu = True


@dataclass
class OfflineSDPOConfig(OnlineSDPOConfig):
    """OnlineSDPOConfig with the authors' offline defaults: the raw signal, and the first two tokens left out."""

    advantage_baseline: str = field(
        default="none",
        metadata={"help": "What is subtracted from the per-token signal; offline the authors use the raw signal "
                          "(`none`). `sequence_mean` and `leave_one_out` work as online.",
                  "choices": list(ADVANTAGE_BASELINES)},
    )
    ignore_first_tokens: int = field(
        default=2,
        metadata={"help": "Leave the first this many tokens of each logged answer out of the loss (the authors' 2: "
                          "an answer's opening tokens carry little of the user's reaction)."},
    )

    def __post_init__(self):
        if self.use_vllm:
            raise ValueError("use_vllm has no use offline: the answers are logged, nothing is generated")
        super().__post_init__()
