"""Who judges: the judge's flags (`JudgeArguments`) and one builder per judge (`JUDGES`).

A local model judges on every process, each its share of the pairs (Qwen3-8B in the paper's TL;DR setting).
Claude (the paper's HelpSteer2 judge) and any OpenAI-compatible server (a vLLM-served Qwen3-8B that judges for
all processes, started like scripts/serve_user_simulator.sh) are one client on the main process, many requests
at a time, on the client layer of chat_clients.py. Every judge answers `complete(conversations)` with one text
per conversation, or None where a request failed for good (its pair is then left for a re-run to judge); the local
and the served judge also answer `label_logprobs(conversations)`, the log-probabilities of the labels A, B and C as
the first token of the answer, for `--judge_protocol logprobs` (judging.py reads both).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from sdpo_interactions.evaluation.judging import DEFAULT_TIE_MARGIN, LABELS, label_logprobs
from sdpo_interactions.run_files import InputError
from sdpo_interactions.users.registry import DEFAULT_CLAUDE_MODEL, check_api_base, lookup, parse_json_object

logger = logging.getLogger(__name__)

DEFAULT_JUDGE_MODELS = {"local": "Qwen/Qwen3-8B", "claude": DEFAULT_CLAUDE_MODEL}
# The key of an OpenAI-compatible judge server: the first of these that is set (none for a local vLLM).
JUDGE_KEY_ENV = ("JUDGE_API_KEY", "OPENAI_API_KEY")
# Old flag -> new flag. The old names came from the time Claude was the only API judge; they still work.
DEPRECATED_FLAGS = {
    "claude_max_concurrency": "judge_api_max_concurrency",
    "claude_timeout": "judge_api_timeout",
    "claude_max_retries": "judge_api_max_retries",
}
API_DEFAULTS = {"judge_api_max_concurrency": 16, "judge_api_timeout": 60.0, "judge_api_max_retries": 8}
# How a verdict is read (judging.judge_verdicts): the letter the judge writes, or its labels' log-probabilities.
PROTOCOLS = ("letter", "logprobs")
# First-token candidates a served judge is asked for: the most OpenAI's API and vLLM's default server allow.
TOP_LOGPROBS = 20


class LocalJudge:
    """A local chat model as judge, greedy by default. The model loads on the first call, so that building the
    judge early checks nothing slow, and the checkpoints' generation never shares memory with it."""

    sharded = True  # every process judges its share of the pairs

    def __init__(self, model_name_or_path: str, *, max_new_tokens: int, temperature: float, batch_size: int,
                 chat_template_kwargs: dict, dtype: str = "auto", protocol: str = "letter",
                 tie_margin: float = DEFAULT_TIE_MARGIN):
        self.protocol, self.tie_margin = protocol, tie_margin
        self.model_name_or_path = model_name_or_path
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.chat_template_kwargs = chat_template_kwargs
        self.dtype = dtype
        self.chunk_size = batch_size  # pairs per process between two appends of the judgments file
        self._chat = None

    def _model(self):
        from sdpo_interactions.evaluation.generation import ChatModel

        if self._chat is None:
            self._chat = ChatModel(self.model_name_or_path, self.dtype)
        return self._chat

    def complete(self, conversations: Sequence[list[dict]]) -> list[Optional[str]]:
        from sdpo_interactions.sampling import Sampling

        return self._model().generate(conversations, self.max_new_tokens, Sampling(temperature=self.temperature),
                                      self.batch_size, self.chat_template_kwargs)

    def label_logprobs(self, conversations: Sequence[list[dict]]) -> list[dict[str, float]]:
        """From the model's logits: each label's best spelling, as the authors' StyleJudge scores it."""
        return self._model().label_logprobs(conversations, LABELS, self.batch_size, self.chat_template_kwargs)

    def close(self) -> None:
        if self._chat is not None:
            self._chat.close()
            self._chat = None


class ApiJudge:
    """A judge behind a chat API, one client on the main process (one concurrency bound against rate limits).

    A request that still fails after the SDK's retries answers None: its pair is not recorded, so a re-run asks
    again instead of storing a failure as a verdict.
    """

    sharded = False

    def __init__(self, client, model: str, *, max_new_tokens: int, temperature: float,
                 chat_template_kwargs: Optional[dict] = None, protocol: str = "letter",
                 tie_margin: float = DEFAULT_TIE_MARGIN):
        self.protocol, self.tie_margin = protocol, tie_margin
        self.client = client
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.chat_template_kwargs = chat_template_kwargs or None  # {} sends none
        self.chunk_size = 4 * client.max_concurrency

    def _ask(self, conversations: Sequence[list[dict]], **request) -> list:
        """One result per conversation; failures are logged and left to the caller as results with an error."""
        from sdpo_interactions.chat_clients import ChatRequest

        requests = [
            ChatRequest.from_chat(self.model, chat, temperature=self.temperature,
                                  chat_template_kwargs=self.chat_template_kwargs, **request)
            for chat in conversations
        ]
        results = self.client.create_many(requests)
        errors = [r.error for r in results if not r.ok]
        if errors:
            logger.warning("%d/%d %s judge requests failed (first: %s)", len(errors), len(results),
                           self.client.wire, errors[0])
        return results

    def complete(self, conversations: Sequence[list[dict]]) -> list[Optional[str]]:
        return [r.text if r.ok else None for r in self._ask(conversations, max_tokens=self.max_new_tokens)]

    def label_logprobs(self, conversations: Sequence[list[dict]]) -> list[Optional[dict[str, Optional[float]]]]:
        """The first token's most likely candidates (one token is generated): each label's best spelling among
        them, None for a label outside them. A server that sends no log-probabilities cannot judge this way."""
        results = self._ask(conversations, max_tokens=1, top_logprobs=TOP_LOGPROBS)
        if any(r.ok and r.top_logprobs is None for r in results):
            raise InputError(f"the judge at {self.client.base_url} returned no log-probabilities: --judge_protocol "
                             "logprobs needs a server that answers `logprobs`/`top_logprobs` (vLLM, SGLang); use "
                             "--judge_protocol letter with this one")
        return [label_logprobs(r.top_logprobs) if r.ok else None for r in results]

    def close(self) -> None:
        pass


def _local_judge(args: JudgeArguments, dtype: str) -> LocalJudge:
    return LocalJudge(args.judge_model, max_new_tokens=args.judge_max_new_tokens, temperature=args.judge_temperature,
                      batch_size=args.judge_batch_size, chat_template_kwargs=args.judge_chat_template_kwargs,
                      dtype=dtype, protocol=args.judge_protocol, tie_margin=args.judge_tie_margin)


def _client_settings(args: JudgeArguments) -> dict:
    return dict(max_concurrency=args.judge_api_max_concurrency, timeout=args.judge_api_timeout,
                max_retries=args.judge_api_max_retries)


def _claude_judge(args: JudgeArguments, dtype: str) -> ApiJudge:
    from sdpo_interactions.chat_clients import ClaudeMessagesClient

    client = ClaudeMessagesClient(**_client_settings(args), instead="pass --judge local or --judge openai")
    return ApiJudge(client, args.judge_model, max_new_tokens=args.judge_max_new_tokens,
                    temperature=args.judge_temperature)


def _openai_judge(args: JudgeArguments, dtype: str) -> ApiJudge:
    from sdpo_interactions.chat_clients import OpenAIChatClient

    client = OpenAIChatClient(args.judge_api_base, **_client_settings(args), key_env=JUDGE_KEY_ENV)
    return ApiJudge(client, args.judge_model, max_new_tokens=args.judge_max_new_tokens,
                    temperature=args.judge_temperature, chat_template_kwargs=args.judge_chat_template_kwargs,
                    protocol=args.judge_protocol, tie_margin=args.judge_tie_margin)


# JudgeArguments.judge -> the builder of that judge; each imports its own stack when called.
JUDGES: dict[str, Callable] = {"local": _local_judge, "claude": _claude_judge, "openai": _openai_judge}


def build_judge(args: JudgeArguments, dtype: str = "auto"):
    """The judge `args` describe. An API judge checks its key and URL here; a local one loads on first use.
    `dtype` is the local judge's weights dtype (the evaluation's --dtype)."""
    return lookup(JUDGES, args.judge, "--judge")(args, dtype)


@dataclass
class JudgeArguments:
    """The judge: which one, its model, how it answers, and the client settings of an API judge."""

    judge: str = field(
        default="local",
        metadata={"help": "Who judges: local (a model on every process), claude, or openai (any OpenAI-compatible "
                          "server, e.g. a vLLM-served Qwen3-8B, at --judge_api_base).",
                  "choices": list(JUDGES)},
    )
    judge_model: Optional[str] = field(
        default=None,
        metadata={"help": f"Judge model (default: {DEFAULT_JUDGE_MODELS['local']} for local, "
                          f"{DEFAULT_JUDGE_MODELS['claude']} for claude, --judge_api_model for openai)."},
    )
    judge_api_base: Optional[str] = field(
        default=None,
        metadata={"help": "URL of the OpenAI-compatible server of --judge openai, e.g. http://judgehost:8000/v1. "
                          "Its key, if any, is read from JUDGE_API_KEY (else OPENAI_API_KEY), never logged or saved."},
    )
    judge_api_model: Optional[str] = field(
        default=None, metadata={"help": "Model name the --judge_api_base server serves (its /v1/models lists it)."}
    )
    judge_protocol: str = field(
        default="letter",
        metadata={"help": "How a verdict is read: letter (the judge writes A, B or C; every judge, as the authors' "
                          "released evaluation runs it) or logprobs (the log-probabilities of A, B and C as the first "
                          "token, a tie unless A or B leads by --judge_tie_margin: the authors' StyleJudge; local and "
                          "openai judges only, Claude exposes no label probabilities).",
                  "choices": list(PROTOCOLS)},
    )
    judge_tie_margin: float = field(
        default=DEFAULT_TIE_MARGIN,
        metadata={"help": "--judge_protocol logprobs: the lead in nats the best label needs over the runner-up, "
                          "else the verdict is a tie (0.1, as the authors' evaluation script sets it)."},
    )
    judge_max_new_tokens: int = field(default=32, metadata={"help": "Longest judge answer, in tokens."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Judge temperature; 0 is greedy/deterministic."})
    judge_batch_size: int = field(default=8, metadata={"help": "Local judge batch size per process."})
    judge_chat_template_kwargs: Optional[str] = field(
        default=None,
        metadata={"help": 'Chat template kwargs (JSON) of a local or served judge; default {"enable_thinking": '
                          "false}, as the paper's Qwen3 judge. A served judge gets them in the request body (vLLM and "
                          "SGLang read it); pass '{}' to send none to a server that refuses the field."},
    )
    judge_api_max_concurrency: int = field(
        default=API_DEFAULTS["judge_api_max_concurrency"],
        metadata={"help": "Concurrent requests to an API judge (claude or openai)."},
    )
    judge_api_timeout: float = field(
        default=API_DEFAULTS["judge_api_timeout"], metadata={"help": "Seconds before one judge request times out."}
    )
    judge_api_max_retries: int = field(
        default=API_DEFAULTS["judge_api_max_retries"],
        metadata={"help": "Retries of the API SDK per judge request (429 with retry-after, 5xx, timeouts)."},
    )
    claude_max_concurrency: Optional[int] = field(
        default=None, metadata={"help": "Deprecated: use --judge_api_max_concurrency."}
    )
    claude_timeout: Optional[float] = field(default=None, metadata={"help": "Deprecated: use --judge_api_timeout."})
    claude_max_retries: Optional[int] = field(
        default=None, metadata={"help": "Deprecated: use --judge_api_max_retries."}
    )

    def __post_init__(self):
        lookup(JUDGES, self.judge, "--judge")  # an unknown name lists the choices
        lookup(dict.fromkeys(PROTOCOLS), self.judge_protocol, "--judge_protocol")
        if self.judge_protocol == "logprobs" and self.judge == "claude":
            raise ValueError("--judge_protocol logprobs needs the labels' log-probabilities, which Claude does not "
                             "expose: use --judge local or --judge openai with it, or --judge_protocol letter")
        if not self.judge_tie_margin >= 0:
            raise ValueError(f"--judge_tie_margin must be >= 0 (nats), got {self.judge_tie_margin}")
        self._map_deprecated_flags()
        for name in ("judge_max_new_tokens", "judge_batch_size", "judge_api_max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.judge_api_timeout <= 0:
            raise ValueError(f"--judge_api_timeout must be > 0 seconds, got {self.judge_api_timeout}")
        if self.judge_api_max_retries < 0:
            raise ValueError(f"--judge_api_max_retries must be >= 0, got {self.judge_api_max_retries}")
        highest = 1.0 if self.judge == "claude" else 2.0
        if not 0.0 <= self.judge_temperature <= highest:
            raise ValueError(f"--judge_temperature must be in [0, {highest:g}] for --judge {self.judge}, "
                             f"got {self.judge_temperature}")
        kwargs = parse_json_object(self.judge_chat_template_kwargs, "judge_chat_template_kwargs")
        self.judge_chat_template_kwargs = {"enable_thinking": False} if kwargs is None else kwargs
        self._resolve_model()

    def _map_deprecated_flags(self) -> None:
        """--claude_* set the --judge_api_* they were renamed to, with a warning; a contradiction is an error."""
        for old, new in DEPRECATED_FLAGS.items():
            value = getattr(self, old)
            if value is None:
                continue
            if getattr(self, new) not in (API_DEFAULTS[new], value):
                raise ValueError(f"--{old} (deprecated) and --{new} contradict each other; pass --{new} only")
            logger.warning("--%s is deprecated; use --%s (taking %s)", old, new, value)
            setattr(self, new, value)

    def _resolve_model(self) -> None:
        """judge_model: the flag, the served model of --judge openai, or the judge's default."""
        if self.judge != "openai":
            if self.judge_api_base is not None or self.judge_api_model is not None:
                raise ValueError("--judge_api_base and --judge_api_model are for --judge openai")
            self.judge_model = self.judge_model or DEFAULT_JUDGE_MODELS[self.judge]
            return
        if self.judge_api_base is None:
            raise ValueError("--judge openai needs --judge_api_base: the URL of the server, e.g. http://host:8000/v1")
        check_api_base(self.judge_api_base, "--judge_api_base")
        if self.judge_model is not None and self.judge_api_model not in (None, self.judge_model):
            raise ValueError("--judge_model and --judge_api_model name different models; pass --judge_api_model")
        self.judge_api_model = self.judge_api_model or self.judge_model
        if not self.judge_api_model:
            raise ValueError("--judge openai needs --judge_api_model: the model name the server serves "
                             "(GET <judge_api_base>/models lists it)")
        self.judge_model = self.judge_api_model
