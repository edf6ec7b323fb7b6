"""The live server's options (one dataclass, every problem reported at once) and its two keys.

Defaults follow the authors' live updater (lasgroup/user_interactions, branch online-interactions, live_config.py and
scripts/run_live_chat.sh): plain AdamW at 1e-5 without weight decay, gradient norm clipped to 1.0, LoRA r 64 and
alpha 128 on every linear projection, the raw signal (no baseline) clipped to [-2, 2]. Unlike their updater, samples
are taken in batches and y's sampling log-probs give the clipped importance ratio (docs/live.md, fidelity).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional, Union

from sdpo_interactions.core.hindsight import DEFAULT_HINDSIGHT_TEMPLATE, template_problems
from sdpo_interactions.core.maths import ADVANTAGE_BASELINES, LOSS_TYPES
from sdpo_interactions.core.objectives import LOGIT_MODES, OBJECTIVES
from sdpo_interactions.core.teacher import TEACHERS
from sdpo_interactions.run_files import InputError

API_KEY_VARIABLE = "LIVE_API_KEY"
ADMIN_KEY_VARIABLE = "LIVE_ADMIN_KEY"
VLLM_KEY_VARIABLE = "VLLM_API_KEY"
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("transformers", "vllm")
# leave_one_out needs several answers to one prompt; a live sample has one.
LIVE_BASELINES = tuple(b for b in ADVANTAGE_BASELINES if b != "leave_one_out")


@dataclass(frozen=True)
class LiveKeys:
    """The bearer key of the chat API and the separate admin key, read from the environment only."""

    api_key: str
    admin_key: str

    def __repr__(self) -> str:  # never shown, whatever prints the object
        return "LiveKeys(api_key=<hidden>, admin_key=<hidden>)"

    @classmethod
    def from_environ(cls, environ=os.environ) -> "LiveKeys":
        api, admin = environ.get(API_KEY_VARIABLE, ""), environ.get(ADMIN_KEY_VARIABLE, "")
        problems = [f"{name} is not set: export {name}=<a long random string> first"
                    for name, value in ((API_KEY_VARIABLE, api), (ADMIN_KEY_VARIABLE, admin)) if not value]
        if api and admin and api == admin:
            problems.append(f"{API_KEY_VARIABLE} and {ADMIN_KEY_VARIABLE} must differ: a chat client must not be "
                            "able to delete users")
        problems += [f"{name} is shorter than 16 characters" for name, value
                     in ((API_KEY_VARIABLE, api), (ADMIN_KEY_VARIABLE, admin)) if value and len(value) < 16]
        if problems:
            raise InputError("; ".join(problems))
        return cls(api, admin)


def _help(text: str, choices=None) -> dict:
    return {"help": text} if choices is None else {"help": text, "choices": list(choices)}


@dataclass
class ServingArguments:
    """What the server loads, where it keeps its state and how it answers."""

    model_name_or_path: str = field(default="", metadata=_help("The policy model (a folder or a Hub name)."))
    adapter_path: Optional[str] = field(default=None, metadata=_help(
        "A LoRA adapter folder to start from (unset: a new LoRA adapter, which leaves the model unchanged)."))
    data_dir: str = field(default="runs/live", metadata=_help(
        "Where the SQLite store (live.sqlite3) and the adapter versions (adapters/) are kept; a restart resumes."))
    served_model_name: str = field(default="sdpo-live", metadata=_help("The model name /v1/models lists."))
    host: str = field(default="127.0.0.1", metadata=_help("Address to listen on (0.0.0.0: every interface)."))
    port: int = field(default=8000, metadata=_help("Port to listen on."))
    device: str = field(default="auto", metadata=_help("Device of both models: auto (cuda if present), cpu, cuda:N."))
    dtype: str = field(default="auto", metadata=_help("Weights' dtype: auto (bfloat16 on a GPU, float32 on a CPU).",
                                                      DTYPES))
    chat_template_kwargs: Optional[Union[dict, str]] = field(
        default_factory=lambda: {"enable_thinking": False},
        metadata=_help("Chat template keyword arguments (JSON on the command line); Qwen3 thinking off by default."))
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature when a request sets none."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling when a request sets none."))
    max_completion_tokens: int = field(default=512, metadata=_help(
        "Longest answer: the default and the ceiling of a request's max_tokens."))
    generation_batch_size: int = field(default=8, metadata=_help(
        "transformers backend: requests generated together at most."))
    generation_backend: str = field(default="transformers", metadata=_help(
        "Who generates: transformers (in this process, on --device) or vllm (a `vllm serve` at --vllm_url with "
        "runtime LoRA loading; docs/live.md). The learner trains in this process either way.", BACKENDS))
    vllm_url: Optional[str] = field(default=None, metadata=_help(
        "vllm backend: the OpenAI base URL of `vllm serve` (http://host:port/v1); its key, if any, from VLLM_API_KEY."))
    vllm_max_concurrency: int = field(default=64, metadata=_help("vllm backend: requests in flight at most."))
    export_to: Optional[str] = field(default=None, metadata=_help(
        "Write the store's conversations to this JSONL file (the offline format train_offline.py reads) and exit, "
        "without loading a model or serving."))


@dataclass
class LimitArguments:
    """Request limits: past one, the request is refused with a JSON error and nothing is stored."""

    max_request_bytes: int = field(default=1_000_000, metadata=_help("Largest request body (413 past it)."))
    max_message_chars: int = field(default=32_000, metadata=_help("Longest message in characters (413 past it)."))
    max_messages: int = field(default=64, metadata=_help("Most messages in one request (400 past it)."))
    max_prompt_tokens: int = field(default=4096, metadata=_help(
        "Longest rendered conversation in tokens (400, code context_length_exceeded, past it)."))


@dataclass
class LearningArguments:
    """How and when the adapter learns from the samples."""

    learn: bool = field(default=True, metadata=_help("Train on the samples (false: serve and log only)."))
    per_user_adapters: bool = field(default=False, metadata=_help(
        "Give each user id its own adapter, trained only on that user's samples and serving only that user."))
    samples_per_update: int = field(default=4, metadata=_help("Samples one update takes (one optimizer step)."))
    max_sample_wait_seconds: float = field(default=60.0, metadata=_help(
        "Train a smaller batch once the oldest pending sample has waited this long."))
    min_seconds_between_updates: float = field(default=10.0, metadata=_help(
        "The update-rate cap: seconds from the end of one update of an adapter to the start of its next."))
    learning_rate: float = field(default=1e-5, metadata=_help("AdamW's learning rate (the authors' live 1e-5)."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW's weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient-norm clip of each update."))
    lora_r: int = field(default=64, metadata=_help("LoRA rank of a new adapter (the authors' scripts: 64)."))
    lora_alpha: int = field(default=128, metadata=_help("LoRA alpha of a new adapter (the authors' scripts: 128)."))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout of a new adapter."))
    lora_target_modules: str = field(default="all-linear", metadata=_help(
        "Modules a new adapter wraps: all-linear, or comma-separated names (q_proj,v_proj)."))
    seed: int = field(default=0, metadata=_help("Seed of a new adapter's initialisation and of the monitors' probes."))


@dataclass
class ObjectiveArguments:
    """The SDPO objective, under the trainers' option names."""

    distillation_mode: str = field(default="sampled_token", metadata=_help(
        "The per-token objective (core/objectives.py): sampled_token (the paper's), topk_logits or full_logits.",
        OBJECTIVES))
    distillation_topk: int = field(default=50, metadata=_help("topk_logits: the student's k tokens (authors: 50)."))
    distillation_add_tail: bool = field(default=True, metadata=_help(
        "topk_logits: a bucket for the mass outside the top k (false renormalises over the k)."))
    distillation_alpha: float = field(default=1.0, metadata=_help(
        "The logit modes' divergence: 1 reverse KL (the paper's), 0 forward KL, in between TRL's generalised JSD."))
    distillation_is_clip: Optional[float] = field(default=None, metadata=_help(
        "The logit modes: weight each token by its importance ratio against the logged sampling log-probs, capped "
        "at this (TRL's default 2.0; unset: no weighting, the authors')."))
    distillation_chunk_size: int = field(default=256, metadata=_help(
        "The logit modes: answer tokens projected to the vocabulary at once."))
    teacher_model_kind: str = field(default="live", metadata=_help(
        "Who re-scores the answer in hindsight (core/teacher.py): live (the paper's), base (the adapter switched "
        "off) or ema (a moving average of the published adapter; shared adapter only).", TEACHERS))
    teacher_update_rate: float = field(default=0.05, metadata=_help(
        "ema: teacher <- (1 - rate) teacher + rate student when it follows (see teacher_sync_steps)."))
    teacher_sync_steps: int = field(default=1, metadata=_help(
        "ema: the teacher follows the student at every published version whose number is a multiple of this "
        "(TRL's name; 1: every published update). A rejected update never moves it."))
    advantage_baseline: str = field(default="none", metadata=_help(
        "What is subtracted from the per-token signal (the authors' live updater: none).", LIVE_BASELINES))
    signal_clip: Optional[float] = field(default=2.0, metadata=_help(
        "sampled_token: clip the per-token signal to [-signal_clip, signal_clip] (the authors' live script: 2.0; "
        "the logit modes have no signal to clip and do not read it)."))
    epsilon: float = field(default=0.2, metadata=_help("Lower clip of the importance ratio: 1 - epsilon."))
    epsilon_high: Optional[float] = field(default=None, metadata=_help(
        "Upper clip of the importance ratio: 1 + epsilon_high (unset: epsilon)."))
    delta: Optional[float] = field(default=None, metadata=_help("Upper bound of the unclipped ratio (two-sided clip)."))
    loss_type: str = field(default="grpo", metadata=_help("How token losses are averaged over an update.", LOSS_TYPES))
    ignore_first_tokens: int = field(default=0, metadata=_help("Leave each answer's first tokens out of the loss."))
    hindsight_template: str = field(default=DEFAULT_HINDSIGHT_TEMPLATE, metadata=_help(
        "Appended to the last user message of the teacher's prompt; {feedback} is the user's next message."))


@dataclass
class MonitorArguments:
    """The safeguards: an update outside any of these bounds is not published. Unset turns a monitor off."""

    monitor_min_entropy_ratio: Optional[float] = field(default=0.5, metadata=_help(
        "Lowest mean token entropy of the updated adapter over the base model's, on the update's answers."))
    monitor_max_entropy_ratio: Optional[float] = field(default=2.0, metadata=_help("Highest such entropy ratio."))
    monitor_min_length_ratio: Optional[float] = field(default=0.5, metadata=_help(
        "Lowest mean answer length of the updated adapter over the base model's, on the update's prompts."))
    monitor_max_length_ratio: Optional[float] = field(default=2.0, metadata=_help("Highest such length ratio."))
    monitor_max_repetition_increase: Optional[float] = field(default=0.25, metadata=_help(
        "Largest rise of the repeated 4-gram share of those answers over the base model's."))
    monitor_min_specificity: Optional[float] = field(default=-0.1, metadata=_help(
        "Lowest feedback specificity: mean |signal| under each sample's own follow-up minus under another "
        "sample's (needs 2 samples in an update). Below 0 a stranger's follow-up moves the signal more than the "
        "user's own; a model that reads feedback stays above 0 (raise the bound to 0 or 0.02 for one), the 135M "
        "embedded model wanders about 0 by up to 0.1."))
    monitor_probe_tokens: int = field(default=64, metadata=_help("Longest answer the length probes generate."))


@dataclass
class LiveArguments(ServingArguments, LimitArguments, LearningArguments, ObjectiveArguments, MonitorArguments):
    """Every option of scripts/serve_live_sdpo.sh, checked at once before any model loads."""

    def __post_init__(self):
        if isinstance(self.chat_template_kwargs, str):
            self.chat_template_kwargs = json.loads(self.chat_template_kwargs)
        self.chat_template_kwargs = self.chat_template_kwargs or {}
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        problems = [] if self.model_name_or_path or self.export_to else ["--model_name_or_path is required"]
        if self.generation_backend == "vllm" and not self.vllm_url and not self.export_to:
            problems.append("generation_backend=vllm needs --vllm_url, the base URL of `vllm serve` (…/v1)")
        for name in ("port", "max_completion_tokens", "generation_batch_size", "vllm_max_concurrency",
                     "max_request_bytes",
                     "max_message_chars", "max_messages", "max_prompt_tokens", "samples_per_update", "lora_r",
                     "lora_alpha", "monitor_probe_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_sample_wait_seconds", "min_seconds_between_updates", "weight_decay", "ignore_first_tokens",
                     "temperature"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "max_grad_norm", "epsilon"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.signal_clip is not None and self.signal_clip <= 0:
            problems.append(f"signal_clip must be > 0 (or unset), got {self.signal_clip}")
        for name, choices in (("dtype", DTYPES), ("generation_backend", BACKENDS), ("distillation_mode", OBJECTIVES),
                              ("teacher_model_kind", TEACHERS),
                              ("advantage_baseline", LIVE_BASELINES), ("loss_type", LOSS_TYPES)):
            if getattr(self, name) not in choices:
                problems.append(f"Unknown {name} {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        problems += template_problems(self.hindsight_template)
        return problems + self._monitor_problems() + self._objective_problems()

    def _objective_problems(self) -> list[str]:
        problems = [f"{name} must be >= 1, got {getattr(self, name)}"
                    for name in ("distillation_topk", "distillation_chunk_size") if getattr(self, name) < 1]
        if not 0.0 <= self.distillation_alpha <= 1.0:
            problems.append(f"distillation_alpha must be in [0, 1], got {self.distillation_alpha}")
        if not 0.0 < self.teacher_update_rate <= 1.0:
            problems.append(f"teacher_update_rate must be in (0, 1], got {self.teacher_update_rate}")
        if self.teacher_sync_steps < 1:
            problems.append(f"teacher_sync_steps must be >= 1, got {self.teacher_sync_steps}")
        if self.distillation_is_clip is not None and self.distillation_is_clip <= 0:
            problems.append(f"distillation_is_clip must be > 0 (or unset), got {self.distillation_is_clip}")
        if self.distillation_mode not in LOGIT_MODES and (self.distillation_alpha != 1.0 or
                                                          self.distillation_is_clip is not None):
            problems.append("distillation_alpha and distillation_is_clip belong to topk_logits and full_logits; "
                            f"{self.distillation_mode} takes alpha 1 and clips its ratio with epsilon")
        if self.teacher_model_kind == "ema" and self.per_user_adapters:
            problems.append("teacher_model_kind=ema follows one adapter; with per_user_adapters use live or base")
        return problems

    def _monitor_problems(self) -> list[str]:
        problems = []
        for low, high in (("monitor_min_entropy_ratio", "monitor_max_entropy_ratio"),
                          ("monitor_min_length_ratio", "monitor_max_length_ratio")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                problems.append(f"{low}={lo} is above {high}={hi}")
        return problems

    @property
    def target_modules(self) -> Union[str, list[str]]:
        names = [n.strip() for n in self.lora_target_modules.split(",") if n.strip()]
        return "all-linear" if names == ["all-linear"] else names

    @property
    def max_teacher_prompt_length(self) -> int:
        return self.max_prompt_tokens + 512
