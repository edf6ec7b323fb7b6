"""Which simulated user plays the persona: its flags (`UserArguments`) and one builder per backend (`USER_BACKENDS`).

Training, evaluation and scripts of one's own choose the user the same way: parse `UserArguments` (directly, or as
part of a command line's dataclass), then `build_user_simulator(args, chat_template_kwargs)`. The builders import
the model stack or an API SDK only when called, so reading and checking the flags loads neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from sdpo_interactions.personas import resolve_persona

# The paper's Claude user (and judge). Defined here, not in chat_clients, which loads the API SDKs (an extra).
DEFAULT_CLAUDE_MODEL = "claude-haiku-4-5-20251001"
DEFAULT_STYLE = "concise_casual_beginner"

# The authors' simulated users: a local model replies in up to 128 tokens at temperature 0.7 (with Qwen3's top_p
# 0.95 and top_k 20, which transformers filled in), Claude in up to 256 tokens at temperature 0. A served user
# model ("api") is the local one moved to a server, so it keeps the local defaults.
USER_DEFAULTS = {
    "local": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.95, "top_k": 20},
    "api": {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.95, "top_k": 20},
    "claude": {"max_new_tokens": 256, "temperature": 0.0},
}
# What each backend needs on the command line, for the error of a --user_backend that lacks it.
BACKEND_NEEDS = {
    "local": "--user_model_name_or_path",
    "api": "--user_api_base and --user_api_model",
    "claude": "neither --user_model_name_or_path nor --user_api_base (and ANTHROPIC_API_KEY)",
}


@dataclass
class UserArguments:
    """The simulated user: its persona, which backend plays it, and that backend's sampling and client settings."""

    style: str = field(default=DEFAULT_STYLE, metadata={"help": "Persona of the simulated user."})
    style_schedule: Optional[str] = field(
        default=None,
        metadata={"help": "Personas in turn, STYLE:INTERACTIONS,...,STYLE (the last lasts to the end of the run), e.g. "
                          "concise_casual_beginner:256,detailed_professional_expert. Interactions are answers the "
                          "user replied to, over all processes; each switch must fall on an optimizer-step "
                          "boundary. The run starts with the first persona (instead of --style)."},
    )
    persona_file: Optional[str] = field(
        default=None,
        metadata={"help": "YAML or JSON file of style name -> persona description, adding to or overriding the "
                          "built-in personas (personas.yaml). The text trained with is stored in the run settings."},
    )
    user_backend: Optional[str] = field(
        default=None,
        metadata={"help": "Who plays the user: local (a model on every rank), api (one OpenAI-compatible server) "
                          "or claude. Default: local with --user_model_name_or_path, api with --user_api_base, "
                          "else claude.", "choices": list(USER_DEFAULTS)},
    )
    user_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Local user-simulator model, loaded on every rank. When neither it nor --user_api_base is "
                          "set, Claude plays the user (needs ANTHROPIC_API_KEY)."},
    )
    user_api_base: Optional[str] = field(
        default=None,
        metadata={"help": "URL of an OpenAI-compatible server playing the user, shared by all ranks, e.g. "
                          "http://simhost:8000/v1 (vLLM, SGLang, llama.cpp, TGI). Its key, if any, is read from "
                          "USER_API_KEY (else OPENAI_API_KEY) and never logged or saved."},
    )
    user_api_model: Optional[str] = field(
        default=None,
        metadata={"help": "Model name the --user_api_base server serves (its /v1/models lists it)."},
    )
    user_max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": "Longest simulated-user reply, in tokens (default: 128 local, 256 Claude)."}
    )
    user_temperature: Optional[float] = field(
        default=None,
        metadata={"help": "Sampling temperature of the simulated user (default: 0.7 local, 0 Claude; 0 is greedy)."},
    )
    user_top_p: Optional[float] = field(
        default=None, metadata={"help": "top_p of a local or served user (default 0.95; 1.0 switches it off)."}
    )
    user_top_k: Optional[int] = field(
        default=None,
        metadata={"help": "top_k of a local or served user (default 20; 0 switches it off, and sends no top_k to a "
                          "server)."},
    )
    user_batch_size: int = field(default=8, metadata={"help": "Batch size of the local user simulator."})
    claude_model: str = field(default=DEFAULT_CLAUDE_MODEL, metadata={"help": "Claude model of the user."})
    user_api_max_concurrency: int = field(
        default=16, metadata={"help": "Concurrent requests per process to the user's API (Claude or a server)."}
    )
    user_api_timeout: float = field(default=60.0, metadata={"help": "Seconds before one user request times out."})
    user_api_max_retries: int = field(default=8, metadata={"help": "Retries of the API SDK per user request."})
    user_api_max_failed_frac: float = field(
        default=0.5, metadata={"help": "Stop when more than this share of a step's user requests fails for good."}
    )
    user_api_chat_template_kwargs: Optional[Union[dict, str]] = field(
        default=None,
        metadata={"help": "Chat template kwargs (JSON) in each request to the served user (vLLM and SGLang read them); "
                          "default: the policy's chat_template_kwargs, as the local user gets ({\"enable_thinking\": "
                          "false}: a served Qwen3 user does not think). '{}' sends none, for a server that refuses the "
                          "field (transformers serve, hosted APIs)."},
    )
    user_api_cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "On-disk cache of the API user's replies, so a resumed run does not pay twice."},
    )
    # Resolved in __post_init__, not a flag: the persona text of `style`.
    persona: str = field(default="", init=False)

    def __post_init__(self):
        # The persona file is read and checked here, before any model loads; the text is kept for the run.
        if self.style_schedule is not None:
            self._start_the_schedule()
        self.style, self.persona = resolve_persona(self.style, self.persona_file)
        if self.user_max_new_tokens is not None and self.user_max_new_tokens < 1:
            raise ValueError(f"--user_max_new_tokens must be >= 1, got {self.user_max_new_tokens}")
        self.user_backend = self._resolve_backend()
        self._fill_sampling_defaults()
        if self.user_api_max_concurrency < 1:
            raise ValueError(f"--user_api_max_concurrency must be >= 1, got {self.user_api_max_concurrency}")
        if self.user_api_timeout <= 0:
            raise ValueError(f"--user_api_timeout must be > 0 seconds, got {self.user_api_timeout}")
        if self.user_api_max_retries < 0:
            raise ValueError(f"--user_api_max_retries must be >= 0, got {self.user_api_max_retries}")
        if not 0.0 <= self.user_api_max_failed_frac <= 1.0:
            raise ValueError(f"--user_api_max_failed_frac must be in [0, 1], got {self.user_api_max_failed_frac}")
        self.user_api_chat_template_kwargs = parse_json_object(self.user_api_chat_template_kwargs,
                                                               "user_api_chat_template_kwargs")

    def _start_the_schedule(self) -> None:
        """Check the schedule's personas (its steps need the run's batch settings: cli/train.py); its first persona
        is the user's to begin with."""
        from sdpo_interactions.users.style_schedule import parse_style_schedule

        first = parse_style_schedule(self.style_schedule, self.persona_file)[0].style
        if self.style not in (DEFAULT_STYLE, first):
            raise ValueError(f"--style {self.style} and --style_schedule (which starts with {first}) disagree; "
                             "drop --style")
        self.style = first

    def _fill_sampling_defaults(self) -> None:
        defaults = USER_DEFAULTS[self.user_backend]
        if self.user_backend == "claude" and (self.user_top_p is not None or self.user_top_k is not None):
            raise ValueError("--user_top_p and --user_top_k apply to a local or served user model "
                             "(--user_model_name_or_path or --user_api_base), not to Claude")
        for flag in ("max_new_tokens", "temperature", "top_p", "top_k"):
            if getattr(self, f"user_{flag}") is None and flag in defaults:
                setattr(self, f"user_{flag}", defaults[flag])
        if self.user_backend != "claude":
            from sdpo_interactions.sampling import Sampling

            Sampling(temperature=self.user_temperature, top_p=self.user_top_p, top_k=self.user_top_k)

    def _resolve_backend(self) -> str:
        """The USER_BACKENDS key: --user_backend if given (checked against the flags it needs), else implied."""
        implied = self._implied_backend()
        if self.user_backend is None:
            return implied
        user_backend_builder(self.user_backend)  # an unknown name lists the choices
        if self.user_backend != implied:
            raise ValueError(f"--user_backend {self.user_backend} needs {BACKEND_NEEDS[self.user_backend]}")
        return implied

    def _implied_backend(self) -> str:
        """local (a model on every rank), api (one shared OpenAI-compatible server) or claude."""
        if self.user_api_base is None:
            if self.user_api_model is not None:
                raise ValueError("--user_api_model names the model of a --user_api_base server; set --user_api_base")
            return "local" if self.user_model_name_or_path is not None else "claude"
        if self.user_model_name_or_path is not None:
            raise ValueError(
                "Set either --user_model_name_or_path (a user model loaded on every rank) or --user_api_base (one "
                "server all ranks share), not both"
            )
        check_api_base(self.user_api_base, "--user_api_base")
        if not self.user_api_model:
            raise ValueError("--user_api_base needs --user_api_model: the model name the server serves "
                             "(GET <user_api_base>/models lists it)")
        return "api"

    def client_settings(self) -> dict:
        """What both API users take from the --user_api_* flags."""
        return dict(
            max_concurrency=self.user_api_max_concurrency,
            timeout=self.user_api_timeout,
            max_retries=self.user_api_max_retries,
            max_failed_frac=self.user_api_max_failed_frac,
            cache_dir=self.user_api_cache_dir,
            persona=self.persona,
        )


def parse_json_object(value, flag: str) -> Optional[dict]:
    """A flag's JSON object (a dict passes as it is, None stays None), or a ValueError naming the flag."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"--{flag} is not JSON: {err.msg}") from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"--{flag} must be a JSON object")
    return value


def check_api_base(url: str, name: str) -> None:
    """An OpenAI-compatible endpoint must be an http(s) URL; `name` says where it came from in the error."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{name} must be an http(s) URL such as http://simhost:8000/v1, got {url!r}")


def lookup(registry: dict, name: str, what: str):
    """`registry[name]`, or a ValueError naming `what` and listing the choices."""
    if name not in registry:
        raise ValueError(f"Unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def _local_user(args: UserArguments, chat_template_kwargs: dict):
    from sdpo_interactions.sampling import Sampling
    from sdpo_interactions.users.base import StyleUserSimulator

    return StyleUserSimulator(
        args.user_model_name_or_path,
        args.style,
        persona=args.persona,
        max_new_tokens=args.user_max_new_tokens,
        sampling=Sampling(temperature=args.user_temperature, top_p=args.user_top_p, top_k=args.user_top_k),
        batch_size=args.user_batch_size,
        chat_template_kwargs=chat_template_kwargs,
    )


def _served_user(args: UserArguments, chat_template_kwargs: dict):
    from sdpo_interactions.users.api import OpenAIStyleUserSimulator

    return OpenAIStyleUserSimulator(
        args.style,
        base_url=args.user_api_base,
        model=args.user_api_model,
        max_tokens=args.user_max_new_tokens,
        temperature=args.user_temperature,
        top_p=args.user_top_p,
        top_k=args.user_top_k,
        chat_template_kwargs=(chat_template_kwargs if args.user_api_chat_template_kwargs is None
                              else args.user_api_chat_template_kwargs) or None,
        **args.client_settings(),
    )


def _claude_user(args: UserArguments, chat_template_kwargs: dict):
    from sdpo_interactions.users.api import ClaudeStyleUserSimulator

    return ClaudeStyleUserSimulator(
        args.style,
        model=args.claude_model,
        max_tokens=args.user_max_new_tokens,
        temperature=args.user_temperature,
        **args.client_settings(),
    )


# UserArguments.user_backend -> the builder of that user; each imports its own stack when called.
USER_BACKENDS: dict[str, Callable] = {"local": _local_user, "api": _served_user, "claude": _claude_user}


def user_backend_builder(name: str) -> Callable:
    """The builder registered under `name`; an unknown name lists the choices."""
    return lookup(USER_BACKENDS, name, "user backend")


def build_user_simulator(args: UserArguments, chat_template_kwargs: dict):
    """The user `args` describe: a local model is loaded here, an API user checks its key and URL here."""
    return user_backend_builder(args.user_backend)(args, chat_template_kwargs)
