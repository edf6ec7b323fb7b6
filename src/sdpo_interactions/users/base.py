"""Simulated users: given a request and the policy's answer, write the user's next message.

The next message `o` is the hindsight context of SDPO: the policy re-scores its own answer after seeing it.
A simulator therefore has one job, to react to the answer in character, and never to answer the request
itself (that would leak a reference answer into the teacher context).

This module holds what every simulator shares (the persona prompt, the interface) and the local model simulator;
the users behind a chat API (Claude, or a vLLM/SGLang server) are in users/api.py, on the client layer of
chat_clients.py, so that training with a local user needs no API SDK.
"""

from __future__ import annotations

import abc
import logging
from typing import Optional

import torch

from sdpo_interactions.personas import resolve_persona
from sdpo_interactions.run_files import RunError
from sdpo_interactions.sampling import Sampling, generate_exactly

logger = logging.getLogger(__name__)


USER_SYSTEM_TEMPLATE = (
    "You are role-playing a user who has just asked an AI assistant a question and read its answer.\n"
    "Your persona: {persona}\n\n"
    "Write your next message to the assistant, in the first person, as this user would. React only to how "
    "well the answer suits your persona. Do not answer or solve the original request yourself, and do not "
    "rewrite the answer. Be brief: one to three sentences."
)

USER_TURN_TEMPLATE = (
    "My request to the assistant:\n<request>\n{prompt}\n</request>\n\n"
    "The assistant's answer:\n<answer>\n{completion}\n</answer>\n\n"
    "Write my next message to the assistant."
)


def user_system_prompt(persona: str) -> str:
    return USER_SYSTEM_TEMPLATE.format(persona=persona)


def user_messages(persona: str, prompt: str, completion: str) -> list[dict[str, str]]:
    """The conversation a simulator sees: the persona as system prompt, the exchange to react to as user turn."""
    return [
        {"role": "system", "content": user_system_prompt(persona)},
        {"role": "user", "content": USER_TURN_TEMPLATE.format(prompt=prompt, completion=completion)},
    ]


def persona_for(style: str, persona: Optional[str]) -> tuple[str, str]:
    """(style, persona text): a given text is used as it is (from a persona file); otherwise the built-in one."""
    if persona is not None:
        if not persona.strip():
            raise ValueError(f"the persona text of style {style!r} is empty")
        return style, persona
    return resolve_persona(style)


class UserSimulatorError(RunError, RuntimeError):
    """The simulator cannot answer any more (its server is down or refuses): raised by `generate_feedback`, it
    stops the run, after the trainer has saved a checkpoint of the steps made so far."""


class UserSimulator(abc.ABC):
    """Writes the simulated user's next message for each (request, answer) pair.

    What a simulator provides to the trainer:
    - `generate_feedback(prompts, completions)`: one reply per pair, in input order (required). An empty string
      means "no usable feedback" (an empty reply, or a request that failed for good): the trainer masks that
      sample rather than learning from invented feedback. A simulator that cannot answer at all raises
      `UserSimulatorError`: the trainer saves a checkpoint, then stops.
    - `style` and `persona`: the persona's name and text, when the simulator plays one (optional; they are
      recorded in the run settings so that an evaluation can judge with the same user).
    - `pop_metrics()` and `settings()`: metrics since the last call, and a secret-free description (optional).
    - `set_persona(style, persona)`: play another persona from the next call on (a persona schedule calls it between
      optimizer steps). The simulators here write every request from `persona`, so setting it is enough.
    """

    style: Optional[str] = None
    persona: Optional[str] = None

    @abc.abstractmethod
    def generate_feedback(self, prompts: list[str], completions: list[str]) -> list[str]:
        """One message per pair, in input order."""

    def pop_metrics(self) -> dict[str, float]:
        """Metrics accumulated since the last call (token counts, cost, failures), then reset."""
        return {}

    def settings(self) -> dict:
        """The settings an evaluation needs to reproduce this user; never contains a secret."""
        settings = {"class": type(self).__name__, "style": self.style, "persona": self.persona}
        if self.persona is not None:
            settings["system_prompt"] = user_system_prompt(self.persona)
        return settings

    def set_persona(self, style: str, persona: str) -> None:
        self.style, self.persona = persona_for(style, persona)


class StyleUserSimulator(UserSimulator):
    """A local Hugging Face chat model playing the user (Qwen3-8B in the paper's TL;DR runs).

    Every process of a multi-GPU run holds its own copy on its own device and answers for its own samples,
    so no rank waits on another. The default sampling is what the authors' runs actually used: they asked for
    temperature 0.7, and transformers filled in Qwen3's top_p 0.95 and top_k 20; here all three are explicit.
    """

    def __init__(
        self,
        model_name_or_path: str,
        style: str,
        max_new_tokens: int = 128,
        sampling: Sampling = Sampling(temperature=0.7, top_p=0.95, top_k=20),
        batch_size: int = 8,
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype | str = "auto",
        chat_template_kwargs: Optional[dict] = None,
        persona: Optional[str] = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.style, self.persona = persona_for(style, persona)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name_or_path = model_name_or_path
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.batch_size = batch_size
        self.chat_template_kwargs = {"enable_thinking": False} if chat_template_kwargs is None else chat_template_kwargs
        if device is None:
            from accelerate import PartialState

            device = PartialState().device
        self.device = torch.device(device)

        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype).to(self.device).eval()
        self.generation_config = sampling.generation_config(
            max_new_tokens, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        )

    @torch.no_grad()
    def generate_feedback(self, prompts: list[str], completions: list[str]) -> list[str]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [
                self.tokenizer.apply_chat_template(
                    user_messages(self.persona, p, c),
                    tokenize=False,
                    add_generation_prompt=True,
                    **self.chat_template_kwargs,
                )
                for p, c in zip(prompts[start : start + self.batch_size], completions[start : start + self.batch_size])
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            output = generate_exactly(self.model, batch, self.generation_config)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies.extend(text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return replies

    def settings(self) -> dict:
        return {
            **super().settings(),
            "model_name_or_path": self.model_name_or_path,
            "max_new_tokens": self.max_new_tokens,
            "sampling": self.sampling.as_dict(),
            "chat_template_kwargs": self.chat_template_kwargs,
        }
