"""Online Self-Distillation Policy Optimization (SDPO) from user interactions, on top of TRL's GRPOTrainer.

One training sample flows top to bottom through this file:

    prompt x -> generation y (TRL's own paths: transformers, paged, vLLM) -> simulated user's reply o
    -> hindsight context (x with o appended to the last user turn) -> teacher log-probs (no grad)
    -> student log-probs (the grad pass of the loss) -> per-token advantage A_t = teacher - student -> PPO-clip loss

Only two scoring passes run per sample in the on-policy default: the teacher pass at generation time and the
student pass with gradient inside the loss, whose detached values are the student term of the advantage.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback, TrainerState
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import RepeatSampler, pad

from sdpo_interactions.prompts import last_user_text, with_last_user_text
from sdpo_interactions.run_files import (
    append_jsonl,
    filter_jsonl,
    latest_complete_checkpoint,
    read_run_settings,
    write_run_settings,
)
from sdpo_interactions.sampling import Sampling, model_defaults_ignored
from sdpo_interactions.users.base import UserSimulator

logger = logging.getLogger(__name__)

DEFAULT_HINDSIGHT_TEMPLATE = (
    "\n\n[What follows is the next message I will send after reading your answer. It comes from the future: "
    "use it as guidance for how to answer my request above.]\n{feedback}"
)
ADVANTAGE_BASELINES = ("sequence_mean", "leave_one_out", "none")
# What each loss type averages over, across one optimizer step (all micro-batches and processes):
#   grpo    - per answer: the mean over each answer's tokens, then the mean over answers (the paper's update)
#   dapo    - per token: the mean over every token of every answer
#   dr_grpo - the token sum divided by (answers x max_completion_length), a constant per answer
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
TOKEN_LOG_NAME = "token_logps.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers: contexts and maths. Each is small enough to check by hand.
# ---------------------------------------------------------------------------------------------------------------


def hindsight_messages(messages: list[dict[str, str]], feedback: str, template: str) -> list[dict[str, str]]:
    """The teacher's prompt: the same conversation with the user's future reply appended to the last user turn.

    The system prompt and every other turn stay unchanged, so the only difference the teacher sees is `o`.
    """
    return with_last_user_text(messages, last_user_text(messages) + template.format(feedback=feedback))


def fit_request(
    request: str, render: Callable[[str], str], count_tokens: Callable[[str], int], limit: Optional[int],
    shorten: Callable[[str, int], str],
) -> tuple[str, bool]:
    """Render a context around `request`, cutting the request (never y or o) until it fits `limit` tokens.

    `shorten(request, n)` drops about `n` tokens from the request. Returns the text and whether it was cut.
    """
    text = render(request)
    if limit is None:
        return text, False
    overflow = count_tokens(text) - limit
    shortened = False
    while overflow > 0:
        if not request:
            raise ValueError(
                f"A hindsight context needs {count_tokens(text)} tokens even with the request removed, more than "
                f"max_teacher_prompt_length={limit}: the feedback or system prompt is too long for the budget."
            )
        request = shorten(request, overflow)
        shortened = True
        text = render(request)
        overflow = count_tokens(text) - limit
    return text, shortened


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean over the positions where `mask` is 1; an all-masked row gives 0, not NaN."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def leave_one_out_baseline(scores: torch.Tensor, valid: torch.Tensor, group_size: int) -> torch.Tensor:
    """For each sample, the mean score of the *other* valid samples of its prompt group (0 if there are none).

    `scores` and `valid` are flat `(num_groups * group_size,)`, groups contiguous as TRL's RepeatSampler lays them.
    """
    scores = scores.view(-1, group_size)
    valid = valid.view(-1, group_size).to(scores.dtype)
    total = (scores * valid).sum(dim=1, keepdim=True) - scores * valid
    count = valid.sum(dim=1, keepdim=True) - valid
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros_like(total)).flatten()


def sdpo_advantages(
    signal: torch.Tensor,
    mask: torch.Tensor,
    baseline: str,
    has_feedback: torch.Tensor,
    sequence_baseline: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-token advantages from the per-token hindsight signal `teacher - student`, shape (B, T).

    - `sequence_mean`: subtract each sequence's own mean signal (the released research code's default), so an
      answer is judged token against token rather than as a whole.
    - `leave_one_out`: subtract `sequence_baseline`, the mean signal of the other answers to the same prompt.
    - `none`: the raw signal.
    Padding and samples without feedback get exactly 0.
    """
    if baseline == "sequence_mean":
        advantages = signal - masked_mean(signal, mask, dim=1).unsqueeze(1)
    elif baseline == "leave_one_out":
        if sequence_baseline is None:
            raise ValueError("the leave_one_out baseline needs sequence_baseline")
        advantages = signal - sequence_baseline.unsqueeze(1)
    elif baseline == "none":
        advantages = signal
    else:
        raise ValueError(f"Unknown advantage baseline {baseline!r}; choose one of {ADVANTAGE_BASELINES}")
    return advantages * mask.to(signal.dtype) * has_feedback.to(signal.dtype).unsqueeze(1)


def ppo_clip_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    delta: Optional[float] = None,
    sequence_level_ratio: bool = False,
    mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate with a *per-token* advantage. Returns (per-token loss, importance ratio).

    With `sequence_level_ratio` the ratio is the geometric mean over the sequence (GSPO), shape (B, 1).
    """
    log_ratio = logps - old_logps
    if sequence_level_ratio:
        log_ratio = masked_mean(log_ratio, mask, dim=1).unsqueeze(1)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    return -torch.min(ratio * advantages, clipped * advantages), ratio


def derangement(n: int) -> list[int]:
    """A stranger for each of `n` samples: sample i is paired with i + 1 (the last with the first), never itself."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 samples, got {n}")
    return [(i + 1) % n for i in range(n)]


def loss_normalizer(loss_type: str, *, answers: float, tokens: float, max_completion_length: Optional[int]) -> float:
    """What the summed loss of one optimizer step is divided by, given the answers and tokens that carry feedback.

    Only answers with feedback count: a sample the user did not answer neither contributes nor dilutes the rest.
    """
    if loss_type == "grpo":
        total = answers
    elif loss_type == "dapo":
        total = tokens
    elif loss_type == "dr_grpo":
        total = answers * max_completion_length
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    return max(float(total), 1.0)


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, *, loss_type: str, normalizer: float) -> torch.Tensor:
    """One micro-batch's share of the step loss: its summed contribution over the step's `loss_normalizer`.

    `per_token_loss` and `mask` are (B, T); rows of `mask` are zero for answers without feedback. Because every
    micro-batch divides by the same step-wide normaliser, the gradient of a step is the same however its answers are
    split into micro-batches and processes. Under `grpo` an answer contributes the mean of its tokens' losses.
    """
    mask = mask.to(per_token_loss.dtype)
    if loss_type == "grpo":
        contribution = masked_mean(per_token_loss, mask, dim=1).sum()
    elif loss_type in LOSS_TYPES:
        contribution = (per_token_loss * mask).sum()
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    return contribution / normalizer


def micro_batch_normalizer(
    generation_normalizer: float, *, steps_per_generation: int, gradient_accumulation_steps: int, num_processes: int
) -> float:
    """What one micro-batch divides its summed loss by, so that one optimizer step's gradient is its loss summed over
    all micro-batches and processes, divided by the step's `loss_normalizer`.

    `generation_normalizer` is counted over a whole generation batch: `steps_per_generation` micro-batches on each of
    `num_processes` processes, of which one step takes `gradient_accumulation_steps`. The micro-batches' gradients
    are summed over the accumulation steps as they are (TRL 0.24 turns off transformers' own division by setting
    `compute_loss_func`), and DDP averages them over processes, hence the two factors.
    """
    return generation_normalizer * gradient_accumulation_steps / (steps_per_generation * num_processes)


def cpu_processes_need_use_cpu(use_cpu: bool, cuda_available: bool, world_size: int) -> bool:
    """Whether a launch must turn `use_cpu` on: without it, TrainingArguments sets up no process group on a machine
    without a GPU, and each of several processes would train alone on the same samples. With it they join over gloo.
    """
    return not use_cpu and not cuda_available and world_size > 1


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


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
        try:
            self.hindsight_template.format(feedback="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"hindsight_template may contain only the placeholder {{feedback}} (double other braces): {err!r}"
            ) from err
        if "{feedback}" not in self.hindsight_template:
            raise ValueError("hindsight_template must contain the placeholder {feedback}")
        if self.loss_type not in LOSS_TYPES:
            hint = (
                " (bnpo averages the tokens of each micro-batch, so its gradient depends on how a step is split; "
                "dapo is the same average taken over the whole step)"
                if self.loss_type == "bnpo"
                else ""
            )
            raise ValueError(f"Unknown loss_type {self.loss_type!r}; choose one of {', '.join(LOSS_TYPES)}{hint}")
        if self.advantage_baseline not in ADVANTAGE_BASELINES:
            raise ValueError(
                f"Unknown advantage_baseline {self.advantage_baseline!r}; choose one of {', '.join(ADVANTAGE_BASELINES)}"
            )
        if self.num_generations is None or self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if self.advantage_baseline == "leave_one_out" and self.num_generations < 2:
            raise ValueError("advantage_baseline=leave_one_out needs num_generations >= 2")
        if self.use_liger_loss:
            raise ValueError("use_liger_loss is not supported: the Liger GRPO loss takes one advantage per sequence")
        if self.log_completions:
            raise ValueError(f"log_completions is not supported; read <output_dir>/{TOKEN_LOG_NAME} instead")
        for name in ("token_log_samples", "specificity_samples", "specificity_warn_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bf16 is None and not self.fp16 and not self.use_cpu and not torch.cuda.is_available():
            # GRPOConfig turns bf16 on whenever it is unset, which TrainingArguments then refuses on a machine
            # without a GPU; an explicit `bf16: true` (as in the recipes) is still honoured or refused.
            logger.info("No GPU: bf16 is off (pass --bf16 true to force it)")
            self.bf16 = False
        if cpu_processes_need_use_cpu(self.use_cpu, torch.cuda.is_available(), int(os.environ.get("WORLD_SIZE", "1"))):
            logger.info("No GPU under a %s-process launch: use_cpu is on, processes train together over gloo",
                        os.environ["WORLD_SIZE"])
            self.use_cpu = True
        if self.max_teacher_prompt_length is None and self.max_prompt_length is not None:
            self.max_teacher_prompt_length = self.max_prompt_length + 512
        try:
            super().__post_init__()
        except ValueError as err:
            # GRPOConfig's last group check rejects groups of one, which group-normalised rewards need and SDPO's
            # per-sample signal does not; every other check has run by then (use_liger_loss is refused above).
            if self.num_generations != 1 or "at least 2 generations" not in str(err):
                raise


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and stopping
# ---------------------------------------------------------------------------------------------------------------


class GracefulStop(TrainerCallback):
    """The first SIGTERM or SIGINT ends the run after the current step, with a checkpoint; a second one kills.

    Processes can receive the signal at different steps, so the decision is reduced across them every step:
    all stop at the same step, and none waits forever in a collective the others have left.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.requested: Optional[int] = None
        self.stopped_at_step: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = signum
        logger.warning("%s received: stopping after this step with a checkpoint (send it again to kill)",
                       signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor(float(self.requested is not None), device=self.accelerator.device)
        if self.accelerator.reduce(flag, reduction="sum").item() > 0:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step

    @property
    def exit_code(self) -> int:
        """The shell's code for death by the signal (a process that did not receive it uses SIGTERM's)."""
        return 128 + (self.requested or signal.SIGTERM)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class RunSettingsWriter(TrainerCallback):
    """Writes the run settings into every checkpoint, as its last file: their presence marks a complete save.

    Trainer calls `on_save` right after `_save_checkpoint`, so model, optimizer and trainer state are on disk first.
    """

    def __init__(self, settings: Callable[[], dict]):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and checkpoint.is_dir():
            write_run_settings(checkpoint, self.settings())


class TokenLog:
    """The token log file: records buffered during a logging window, appended as whole lines when it closes.

    Callbacks never see micro-batch tensors, so the trainer hands records in; this object owns the buffer, the
    file, and the trimming a resumed run needs.
    """

    def __init__(self, path: Path, samples_per_window: int):
        self.path = Path(path)
        self.samples_per_window = samples_per_window
        self.buffer: list[dict] = []

    @property
    def missing(self) -> int:
        return self.samples_per_window - len(self.buffer)

    def flush(self, write: bool) -> None:
        """Close the window: the main process writes (`write`), every process empties its buffer."""
        if write:
            append_jsonl(self.path, self.buffer)
        self.buffer = []

    def trim(self, first_step: int) -> None:
        """Drop records of steps at or after `first_step`: a resumed run regenerates them, so they'd repeat."""
        filter_jsonl(self.path, lambda record: record["step"] < first_step)


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler, with each epoch's order drawn from (seed, epoch) alone.

    TRL's sampler draws epoch after epoch from one generator, which a resumed run recreates from the seed: resumed
    in epoch k > 0, it replays epoch 0's order. The Trainer (through accelerate) calls `set_epoch` before every
    epoch, resumed or not, so seeding there makes a resumed run see the data the uninterrupted run saw.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.seed is not None:
            self.generator.manual_seed(self.seed + epoch)


# ---------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------


class OnlineSDPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantage is the per-token hindsight log-ratio given by a simulated user's reply.

    Takes what GRPOTrainer takes plus `user_simulator`. No reward function is needed: `reward_funcs`, if given,
    are computed and logged for monitoring only. `user_simulator` may be None when the trainer is only used to
    score signals (`score_signal`), never to train.
    """

    _tag_names = ["trl", "sdpo", "online-sdpo"]

    def __init__(
        self,
        model,
        user_simulator: Optional[UserSimulator] = None,
        args: Optional[OnlineSDPOConfig] = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_funcs=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        run_settings: Optional[dict] = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = OnlineSDPOConfig(f"{name.split('/')[-1]}-SDPO")
        if not isinstance(args, OnlineSDPOConfig):
            raise TypeError(f"args must be an OnlineSDPOConfig, got {type(args).__name__}")
        if user_simulator is not None and not callable(getattr(user_simulator, "generate_feedback", None)):
            raise TypeError(
                f"user_simulator ({type(user_simulator).__name__}) has no generate_feedback(prompts, completions) "
                "method; subclass user_simulator.UserSimulator, whose docstring lists what a simulator provides"
            )
        super().__init__(
            model=model,
            reward_funcs=list(reward_funcs or []),
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )
        self.user_simulator = user_simulator
        self.graceful_stop = GracefulStop(self.accelerator)
        self.add_callback(self.graceful_stop)
        self.run_settings = dict(run_settings or {})
        self.token_log = TokenLog(Path(args.output_dir) / TOKEN_LOG_NAME, args.token_log_samples)
        self.add_callback(RunSettingsWriter(self.sdpo_settings))
        self._flat_specificity = 0  # logging steps in a row whose feedback specificity was under specificity_min
        # Answers generated in training and those the user replied to, over all processes: the x-axis of the paper's
        # win-rate curves. Saved with every checkpoint and restored on resume.
        self.interactions = {"answers": 0, "with_feedback": 0}

    def _get_train_sampler(self, dataset=None) -> EpochSeededRepeatSampler:
        """GRPOTrainer's sampler (same grouping and repeats), with a data order a resumed run can replay."""
        return EpochSeededRepeatSampler(
            data_source=self.train_dataset if dataset is None else dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    # -- rendering and tokenisation --------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    def _render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.args.chat_template_kwargs
        )

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _drop_request_tail(self, request: str, n_tokens: int) -> str:
        ids = self.tokenizer(request, add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(ids[: max(len(ids) - n_tokens, 0)])

    def teacher_context(self, messages: list[dict[str, str]], feedback: str) -> tuple[str, bool]:
        """The exact text placed before y in the teacher pass, and whether its request had to be shortened."""
        def render(request: str) -> str:
            return self._render(
                hindsight_messages(with_last_user_text(messages, request), feedback, self.args.hindsight_template)
            )

        return fit_request(
            last_user_text(messages), render, self._count_tokens, self.args.max_teacher_prompt_length,
            self._drop_request_tail,
        )

    def _left_padded(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pad_rows(self.tokenizer(texts, add_special_tokens=False)["input_ids"], "left")

    def policy_sampling(self) -> dict:
        """The sampling the policy's answers are drawn with: exactly these values, on every generation backend."""
        if self.use_vllm:
            backend = f"vllm-{self.vllm_mode}"
        else:
            backend = "transformers-paged" if self.use_transformers_paged else "transformers"
        sampling = Sampling(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )
        return {"backend": backend, **sampling.as_dict(), "generation_kwargs": self.args.generation_kwargs}

    def _generate(self, prompts, images):
        """TRL's generation, with the model folder's sampling defaults kept out (see sampling.py)."""
        with model_defaults_ignored(self.accelerator.unwrap_model(self.model)):
            return super()._generate(prompts, images)

    def _scoring_batch_size(self) -> int:
        return self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size

    @torch.no_grad()
    def _score(self, model, context_ids, context_mask, completion_ids, completion_mask) -> torch.Tensor:
        """log p(y_t | context, y_<t) without gradient, through TRL's chunked log-prob helper."""
        logps, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([context_ids, completion_ids], dim=1),
            torch.cat([context_mask, completion_mask], dim=1),
            completion_ids.size(1),
            self._scoring_batch_size(),
        )
        return logps

    def _teacher_logps(self, teacher_texts, completion_ids, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(y_t | x, o, y_<t): the hindsight pass over the very same completion tokens.

        Also returns the teacher prompts' lengths in tokens, so the metrics need not tokenize them again.
        """
        teacher_ids, teacher_mask = self._left_padded(teacher_texts)
        logps = self._score(self.model, teacher_ids, teacher_mask, completion_ids, completion_mask)
        return logps, teacher_mask.sum(dim=1)

    # -- generation, feedback, teacher pass -------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.user_simulator is None:
            raise ValueError("OnlineSDPOTrainer needs a user_simulator to train or evaluate")
        if not is_conversational(inputs[0]) or "image" in inputs[0] or "images" in inputs[0]:
            raise ValueError("OnlineSDPOTrainer takes text-only conversational prompts: a `prompt` column of messages")
        messages = [x["prompt"] for x in inputs]

        # 1. Generation, through TRL's own paths.
        batch = self._generate_answers(messages)

        # 2. The simulated user's reply to each (request, answer), on this process, for this process's samples.
        feedback, simulator_seconds = self._ask_user([last_user_text(m) for m in messages], batch["completion_text"])
        return self._score_with_feedback(inputs, messages, batch, feedback, simulator_seconds)

    def _score_with_feedback(self, inputs, messages, batch: dict[str, Any], feedback: list[str],
                             simulator_seconds: float) -> dict[str, Any]:
        """Steps 3 to 5, the same online and offline: hindsight contexts, teacher pass, extra passes, metrics."""
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        requests = [last_user_text(m) for m in messages]
        has_feedback = torch.tensor([bool(o.strip()) for o in feedback], device=device)
        if mode == "train":
            self._count_interactions(has_feedback)

        # 3. Hindsight contexts and the teacher pass over the very same completion tokens.
        teacher_texts, shortened = zip(*(self.teacher_context(m, o) for m, o in zip(messages, feedback)))
        teacher_logps, teacher_lengths = self._teacher_logps(
            list(teacher_texts), batch["completion_ids"], batch["completion_mask"]
        )
        unrelated_logps, stranger_feedback = self._stranger_teacher_pass(messages, feedback, has_feedback, batch,
                                                                         teacher_logps)
        output = {
            **batch,
            "teacher_per_token_logps": teacher_logps,
            "unrelated_teacher_logps": unrelated_logps,
            "stranger_feedback": stranger_feedback,
            "has_feedback": has_feedback,
            "loss_normalizer": self._loss_normalizer(batch["completion_mask"], has_feedback),
            "generation_step": torch.full((len(inputs),), self.state.global_step, device=device),
            "request_text": requests,
            "feedback_text": list(feedback),
            "teacher_context": list(teacher_texts),
        }
        sampling_logps, completion_ids_list = output.pop("sampling_logps"), output.pop("completion_ids_list")

        # 4. Extra passes only where they are needed (old and reference log-probs).
        self._add_extra_passes(output, sampling_logps)

        # 5. Monitoring: reward functions are logged, never trained on.
        if self.reward_funcs:
            conversational = [[{"role": "assistant", "content": c}] for c in output["completion_text"]]
            rewards = self._calculate_rewards(inputs, messages, conversational, completion_ids_list)
            for i, name in enumerate(self.reward_func_names):
                self._metrics[mode][f"rewards/{name}/mean"].append(torch.nanmean(rewards[:, i]).item())

        self._log_generation_metrics(mode, feedback, has_feedback, shortened, teacher_lengths, simulator_seconds)
        return output

    def _generate_answers(self, messages: list[list[dict[str, str]]]) -> dict[str, Any]:
        """y for each prompt: rendered here so the chat template kwargs apply, sampled by TRL's `_generate`."""
        student_texts = [self._render(m) for m in messages]
        prompt_ids_list, completion_ids_list, num_items_in_batch, sampling_logps, _ = self._generate(student_texts, None)
        prompt_ids, prompt_mask = self._pad_rows(prompt_ids_list, "left")
        completion_ids, completion_mask = self._pad_rows(completion_ids_list, "right")
        if self.mask_truncated_completions:
            ended = [ids[-1] in (self.eos_token_id, self.pad_token_id) for ids in completion_ids_list]
            completion_mask = completion_mask * torch.tensor(ended, device=completion_mask.device).unsqueeze(1).long()
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "num_items_in_batch": num_items_in_batch,
            "sampling_logps": sampling_logps,
            "completion_ids_list": completion_ids_list,
            "completion_text": self.tokenizer.batch_decode(completion_ids_list, skip_special_tokens=True),
            # exactly what y follows, after any truncation
            "student_context": self.tokenizer.batch_decode(prompt_ids_list),
        }

    def _stranger_teacher_pass(self, messages, feedback, has_feedback, batch, teacher_logps):
        """At logging steps, up to `specificity_samples` answers scored again with another sample's feedback.

        Returns the teacher log-probs under the stranger's feedback (zeros for rows not re-scored) and, per row, the
        stranger's feedback or None. A stranger whose feedback reads the same as the sample's own gives the same
        context, so its log-probs are the sample's own, and the specificity is exactly 0 when all feedback agrees.
        """
        unrelated = torch.zeros_like(teacher_logps)
        strangers: list[Optional[str]] = [None] * len(feedback)
        due = self.model.training and self.state.global_step % max(int(self.args.logging_steps), 1) == 0
        if not due or self.args.specificity_samples == 0 or len(feedback) < 2:
            return unrelated, strangers
        stranger = derangement(len(feedback))
        chosen = [i for i in range(len(feedback)) if has_feedback[i] and has_feedback[stranger[i]]]
        rescore = []
        for i in chosen[: self.args.specificity_samples]:
            strangers[i] = feedback[stranger[i]]
            if strangers[i] == feedback[i]:
                unrelated[i] = teacher_logps[i]
            else:
                rescore.append(i)
        if rescore:
            texts = [self.teacher_context(messages[i], strangers[i])[0] for i in rescore]
            logps, _ = self._teacher_logps(texts, batch["completion_ids"][rescore], batch["completion_mask"][rescore])
            unrelated[rescore] = logps
        return unrelated, strangers

    def _fixed_answers(self, messages: list[list[dict[str, str]]], completions: list[str]) -> dict[str, Any]:
        """The batch of `_generate_answers` for answers given as text (logged, or chosen for analysis), EOS appended
        so that ending the answer is scored too."""
        student_texts = [self._render(m) for m in messages]
        prompt_ids, prompt_mask = self._left_padded(student_texts)
        eos = self.tokenizer.eos_token
        answer_ids = self.tokenizer([c + eos for c in completions], add_special_tokens=False)["input_ids"]
        completion_ids, completion_mask = self._pad_rows(answer_ids, "right")
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "num_items_in_batch": completion_mask.sum(),
            "sampling_logps": None,
            "completion_ids_list": answer_ids,
            "completion_text": list(completions),
            "student_context": student_texts,
        }

    def _ask_user(self, requests: list[str], completions: list[str]) -> tuple[list[str], float]:
        start = time.perf_counter()
        feedback = self.user_simulator.generate_feedback(requests, completions)
        seconds = time.perf_counter() - start
        if len(feedback) != len(completions):
            raise RuntimeError(f"user simulator returned {len(feedback)} replies for {len(completions)} samples")
        return list(feedback), seconds

    def _add_extra_passes(self, output: dict[str, Any], sampling_logps) -> None:
        """Old log-probs for off-policy reuse, vLLM's correction or the leave-one-out baseline; reference log-probs
        for the KL penalty. The on-policy default needs none of them."""
        context = (output["prompt_ids"], output["prompt_mask"], output["completion_ids"], output["completion_mask"])
        generate_every = self.args.steps_per_generation * self.num_iterations
        vllm_correction = self.use_vllm and self.vllm_importance_sampling_correction
        leave_one_out = self.args.advantage_baseline == "leave_one_out"
        if self.args.gradient_accumulation_steps % generate_every != 0 or vllm_correction or leave_one_out:
            output["old_per_token_logps"] = old_logps = self._score(self.model, *context)
        if vllm_correction:
            sampling, _ = self._pad_rows(sampling_logps, "right", dtype=torch.float32)
            output["importance_sampling_ratio"] = torch.clamp(
                torch.exp(old_logps - sampling), max=self.vllm_importance_sampling_cap
            )
        if leave_one_out:
            scores = masked_mean(output["teacher_per_token_logps"] - old_logps, output["completion_mask"], dim=1)
            has_feedback = output["has_feedback"]
            baseline = leave_one_out_baseline(
                self.accelerator.gather(scores), self.accelerator.gather(has_feedback.float()), self.num_generations
            )
            index = self.accelerator.process_index * len(has_feedback)
            output["sequence_baseline"] = baseline[index : index + len(has_feedback)]
        if self.beta != 0.0:
            output["ref_per_token_logps"] = self._reference_logps(*context)

    def _count_interactions(self, has_feedback: torch.Tensor) -> None:
        gathered = self.accelerator.gather(has_feedback.long())
        self.interactions["answers"] += gathered.numel()
        self.interactions["with_feedback"] += int(gathered.sum().item())

    def _loss_normalizer(self, completion_mask: torch.Tensor, has_feedback: torch.Tensor) -> torch.Tensor:
        """This generation batch's `loss_normalizer`, counted over all processes in training.

        In evaluation the batch is neither split nor accumulated and each process's loss is averaged afterwards, so
        local counts serve.
        """
        counted = self._loss_mask(completion_mask, has_feedback)
        counts = torch.stack([(counted.sum(dim=1) > 0).sum(), counted.sum()]).float()
        if self.model.training:
            counts = self.accelerator.reduce(counts, reduction="sum")
        normalizer = loss_normalizer(
            self.loss_type, answers=counts[0].item(), tokens=counts[1].item(),
            max_completion_length=self.max_completion_length,
        )
        return torch.tensor(normalizer, device=completion_mask.device)

    def _pad_rows(self, rows, side: str, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.accelerator.device
        tensors = [torch.tensor(r, device=device, dtype=dtype) for r in rows]
        masks = [torch.ones(len(r), device=device, dtype=torch.long) for r in rows]
        value = 0.0 if dtype is not None and dtype.is_floating_point else self.pad_token_id
        return pad(tensors, padding_value=value, padding_side=side), pad(masks, padding_value=0, padding_side=side)

    def _reference_logps(self, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
        if self.ref_model is None:  # PEFT: the reference is the base model, adapter disabled
            with self.accelerator.unwrap_model(self.model).disable_adapter():
                return self._score(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        return self._score(self.ref_model, prompt_ids, prompt_mask, completion_ids, completion_mask)

    def _log_generation_metrics(self, mode, feedback, has_feedback, shortened, teacher_lengths, simulator_seconds):
        device = self.accelerator.device
        gather = self.accelerator.gather
        feedback_tokens = torch.tensor([float(self._count_tokens(o)) for o in feedback], device=device)
        metrics = self._metrics[mode]
        metrics["user_sim/seconds"].append(gather(torch.tensor(simulator_seconds, device=device)).max().item())
        metrics["user_sim/empty_feedback_frac"].append(1.0 - gather(has_feedback.float()).mean().item())
        metrics["user_sim/feedback_tokens"].append(gather(feedback_tokens).mean().item())
        metrics["hindsight/shortened_frac"].append(gather(torch.tensor(shortened, device=device).float()).mean().item())
        metrics["hindsight/teacher_prompt_tokens"].append(gather(teacher_lengths.float()).mean().item())
        simulator_metrics = self.user_simulator.pop_metrics() if hasattr(self.user_simulator, "pop_metrics") else {}
        for key, value in sorted(simulator_metrics.items()):
            # Fractions are averaged over processes; counts, tokens and costs are totals for the step.
            reduced = gather(torch.tensor(float(value), device=device))
            metrics[f"user_sim/{key}"].append((reduced.mean() if key.endswith("_frac") else reduced.sum()).item())

    # -- loss --------------------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        logps, entropies = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
        )
        # On-policy, the detached grad-pass log-probs *are* the student term: no separate old-log-prob pass.
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        signal = inputs["teacher_per_token_logps"] - old_logps
        advantages = sdpo_advantages(
            signal,
            completion_mask,
            self.args.advantage_baseline,
            inputs["has_feedback"],
            inputs.get("sequence_baseline"),
        )

        per_token_loss, ratio = self._per_token_policy_loss(logps, old_logps, advantages, completion_mask)
        if self.top_entropy_quantile < 1.0:
            per_token_loss = per_token_loss * self.get_high_entropy_mask(
                entropies, completion_mask, 1 - self.top_entropy_quantile
            )
        if "importance_sampling_ratio" in inputs:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
            per_token_loss = per_token_loss + self.beta * per_token_kl
        with_feedback = self._loss_mask(completion_mask, inputs["has_feedback"])
        normalizer = inputs["loss_normalizer"]
        if self.model.training:
            normalizer = micro_batch_normalizer(
                normalizer, steps_per_generation=self.args.steps_per_generation,
                gradient_accumulation_steps=self.current_gradient_accumulation_steps,
                num_processes=self.accelerator.num_processes,
            )
        loss = aggregate_loss(per_token_loss, with_feedback, loss_type=self.loss_type, normalizer=normalizer)

        mode = "train" if self.model.training else "eval"
        self._log_loss_metrics(mode, inputs, signal, advantages, old_logps, entropies, ratio, completion_mask)
        if self.beta != 0.0:
            self._log_mean(mode, "kl", masked_mean(per_token_kl, completion_mask))
        if mode == "train" and self.args.token_log_samples > 0:
            self._collect_token_log(inputs, old_logps, signal)
        return loss

    def _loss_mask(self, completion_mask: torch.Tensor, has_feedback: torch.Tensor) -> torch.Tensor:
        """The tokens the loss averages over: answers without feedback are left out entirely, the KL term too."""
        return completion_mask * has_feedback.long().unsqueeze(1)

    def _per_token_policy_loss(self, logps, old_logps, advantages, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Online: PPO's clipped surrogate with the per-token advantage. Returns (loss, importance ratio)."""
        return ppo_clip_token_loss(
            logps, old_logps, advantages, self.epsilon_low, self.epsilon_high, self.args.delta,
            sequence_level_ratio=self.importance_sampling_level == "sequence", mask=mask,
        )

    def _log_mean(self, mode: str, key: str, value: torch.Tensor) -> None:
        self._metrics[mode][key].append(self.accelerator.gather(value.detach()).nanmean().item())

    def _log_loss_metrics(self, mode, inputs, signal, advantages, student, entropies, ratio, mask):
        with_feedback = mask * inputs["has_feedback"].long().unsqueeze(1)
        self._log_mean(mode, "sdpo/signal_mean", masked_mean(signal, with_feedback))
        self._log_mean(mode, "sdpo/signal_abs_mean", masked_mean(signal.abs(), with_feedback))
        sequence_sums = (signal * with_feedback).sum(dim=1)
        self._log_mean(mode, "sdpo/sequence_log_ratio", masked_mean(sequence_sums, inputs["has_feedback"]))
        self._log_mean(mode, "sdpo/teacher_logp", masked_mean(inputs["teacher_per_token_logps"], with_feedback))
        self._log_mean(mode, "sdpo/student_logp", masked_mean(student, with_feedback))
        self._log_mean(mode, "sdpo/advantage_abs_mean", masked_mean(advantages.abs(), with_feedback))
        self._log_mean(mode, "entropy", masked_mean(entropies, mask))
        self._log_specificity(mode, inputs, signal.abs(), (inputs["unrelated_teacher_logps"] - student).abs(), mask)
        low = (ratio < 1 - self.epsilon_low) & (advantages < 0)
        high = (ratio > 1 + self.epsilon_high) & (advantages > 0)
        self._log_mean(mode, "clip_ratio/low_mean", masked_mean(low.float(), mask))
        self._log_mean(mode, "clip_ratio/high_mean", masked_mean(high.float(), mask))
        self._log_mean(mode, "clip_ratio/region_mean", masked_mean((low | high).float(), mask))

    def _log_specificity(self, mode, inputs, own_abs, unrelated_abs, mask) -> None:
        """Mean |signal| under each re-scored sample's own feedback and under a stranger's, and their difference.

        Logged only for micro-batches that hold re-scored samples (on any process), so no window averages in zeros.
        """
        rows = torch.tensor([s is not None for s in inputs["stranger_feedback"]], device=mask.device)
        rescored = mask * rows.long().unsqueeze(1)
        values = torch.stack([rows.any().float(), masked_mean(own_abs, rescored), masked_mean(unrelated_abs, rescored)])
        gathered = self.accelerator.gather(values.detach().unsqueeze(0))  # (processes, [present, own, stranger])
        gathered = gathered[gathered[:, 0].bool(), 1:]
        if gathered.numel() == 0:
            return
        own, unrelated = gathered.mean(dim=0).tolist()
        self._metrics[mode]["sdpo/signal_abs_own"].append(own)
        self._metrics[mode]["sdpo/signal_abs_unrelated"].append(unrelated)
        self._metrics[mode]["sdpo/feedback_specificity"].append(own - unrelated)

    # -- the token log -----------------------------------------------------------------------------------------

    def _token_records(self, inputs, student_logps, signal) -> list[dict]:
        records = []
        for i in range(len(inputs["completion_text"])):
            keep = inputs["completion_mask"][i].bool()
            ids = inputs["completion_ids"][i][keep].tolist()
            records.append(
                {
                    "step": int(inputs["generation_step"][i]),
                    "prompt": inputs["request_text"][i],
                    "completion": inputs["completion_text"][i],
                    "feedback": inputs["feedback_text"][i],
                    "student_context": inputs["student_context"][i],
                    "teacher_context": inputs["teacher_context"][i],
                    "completion_ids": ids,
                    "tokens": self.tokenizer.batch_decode([[t] for t in ids]),
                    "logp_student": student_logps[i][keep].tolist(),
                    "logp_teacher": inputs["teacher_per_token_logps"][i][keep].tolist(),
                    "signal": signal[i][keep].tolist(),
                    "stranger_feedback": inputs["stranger_feedback"][i],
                    "signal_unrelated": (
                        None if inputs["stranger_feedback"][i] is None
                        else (inputs["unrelated_teacher_logps"][i][keep].float() - student_logps[i][keep]).tolist()
                    ),
                }
            )
        return records

    def _collect_token_log(self, inputs, student_logps, signal) -> None:
        """Gather this micro-batch's records to every process until the logging window has enough.

        Every process sees the same gathered buffer, so all take the same branch and the collective stays in step.
        """
        missing = self.token_log.missing
        if missing <= 0:
            return
        local = self._token_records(inputs, student_logps.float(), signal.float())[:missing]
        self.token_log.buffer.extend(gather_object(local)[:missing])

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        super().log(logs, start_time)
        self.token_log.flush(write=self.accelerator.is_main_process)
        self._watch_specificity(logs.get("sdpo/feedback_specificity"))

    def _watch_specificity(self, specificity: Optional[float]) -> None:
        """Warn once when the policy's signal, logging step after logging step, barely depends on its own feedback."""
        if specificity is None or self.args.specificity_warn_after == 0:
            return
        self._flat_specificity = self._flat_specificity + 1 if specificity < self.args.specificity_min else 0
        if self._flat_specificity == self.args.specificity_warn_after:
            logger.warning(
                "sdpo/feedback_specificity has stayed below %s for %d logging steps: the policy does not seem to read "
                "its user's feedback (a stranger's feedback moves its signal as much as its own). SDPO learns little "
                "then; check the policy's size, the persona and the hindsight template (visualize_signal.py cases).",
                self.args.specificity_min, self._flat_specificity,
            )

    @property
    def token_log_path(self) -> Path:
        return self.token_log.path

    # -- run files ---------------------------------------------------------------------------------------------

    def _check_feedback_source(self) -> None:
        if self.user_simulator is None:
            raise ValueError("OnlineSDPOTrainer.train needs a user_simulator")

    def sdpo_settings(self) -> dict:
        """What an evaluation needs to reproduce this run's prompts, sampling and user; contains no secret.

        The persona is stored as text, so a later evaluation judges with the user this run trained with even if
        the persona file has changed since.
        """
        user = self.user_simulator
        return {
            "style": getattr(user, "style", None),
            "persona": getattr(user, "persona", None),
            **self.run_settings,
            "model_name_or_path": self.model.config._name_or_path,
            "hindsight_template": self.args.hindsight_template,
            "chat_template_kwargs": self.args.chat_template_kwargs,
            "advantage_baseline": self.args.advantage_baseline,
            "loss_type": self.loss_type,
            "num_generations": self.num_generations,
            "max_prompt_length": self.max_prompt_length,
            "max_completion_length": self.max_completion_length,
            "temperature": self.temperature,
            "sampling": self.policy_sampling(),
            "interactions": dict(self.interactions),
            "global_step": self.state.global_step,
            "user_simulator": user.settings() if user is not None and hasattr(user, "settings") else None,
        }

    def train(self, resume_from_checkpoint=None, **kwargs):
        self._check_feedback_source()
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in {self.args.output_dir} to resume from")
        first_step = 0
        if resume_from_checkpoint:
            state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, "trainer_state.json"))
            first_step = state.global_step
            self.interactions = dict(read_run_settings(resume_from_checkpoint).get("interactions", self.interactions))
        logger.info("Policy sampling (exactly, whatever the model's generation_config.json says): %s",
                    json.dumps(self.policy_sampling()))
        if self.accelerator.is_main_process:
            self.token_log.trim(first_step)
            write_run_settings(self.args.output_dir, self.sdpo_settings())
        self.accelerator.wait_for_everyone()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def save_final(self) -> Optional[int]:
        """After `train`: save the model and trainer state, or, if a signal stopped the run (its checkpoint is saved
        already), return the exit code the process should end with."""
        stop = self.graceful_stop
        if stop.stopped_at_step is not None:
            logger.warning("Stopped by a signal at step %d, checkpoint saved; continue with --resume_from_checkpoint "
                           "last", stop.stopped_at_step)
            return stop.exit_code
        self.save_model(self.args.output_dir)
        self.save_state()  # trainer_state.json: the metrics of every logging step
        logger.info("Model: %s; token log: %s", self.args.output_dir, self.token_log_path)
        return None

    # -- analysis ----------------------------------------------------------------------------------------------

    def score_signal(
        self, prompts: list[list[dict[str, str]]], completions: list[str], feedbacks: list[str]
    ) -> list[dict]:
        """Token-log records for given (prompt, answer, follow-up) triples, scored with the training code path.

        Used to inspect the signal (for instance a relevant against an unrelated follow-up) without training.
        """
        if not (len(prompts) == len(completions) == len(feedbacks)):
            raise ValueError("prompts, completions and feedbacks must have the same length")
        batch = self._fixed_answers(prompts, completions)
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]
        student_texts = batch["student_context"]
        teacher_texts = [self.teacher_context(m, o)[0] for m, o in zip(prompts, feedbacks)]
        was_training = self.model.training
        self.model.eval()
        try:
            student = self._score(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask)
            teacher, _ = self._teacher_logps(teacher_texts, completion_ids, completion_mask)
        finally:
            self.model.train(was_training)
        inputs = {
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "teacher_per_token_logps": teacher,
            "generation_step": torch.full((len(prompts),), self.state.global_step),
            "request_text": [last_user_text(m) for m in prompts],
            "completion_text": list(completions),
            "feedback_text": list(feedbacks),
            "student_context": student_texts,
            "teacher_context": teacher_texts,
            "stranger_feedback": [None] * len(prompts),
            "unrelated_teacher_logps": torch.zeros_like(teacher),
        }
        return self._token_records(inputs, student.float(), (teacher - student).float())
