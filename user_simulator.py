"""Simulated users: given a request and the policy's answer, write the user's next message.

The next message `o` is the hindsight context of SDPO: the policy re-scores its own answer after seeing it.
A simulator therefore has one job, to react to the answer in character, and never to answer the request
itself (that would leak a reference answer into the teacher context).
"""

from __future__ import annotations

import abc
import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)


def _persona(length: str, tone: str, expertise: str) -> str:
    lengths = {
        "concise": "You want short, to-the-point answers. Long answers, padding and repetition annoy you.",
        "detailed": "You want thorough answers that explain the reasoning, cover edge cases and give examples.",
    }
    tones = {
        "casual": "You talk casually and like a relaxed, friendly tone; stiff or formal wording puts you off.",
        "professional": "You expect a professional, precise tone; slang, jokes and chattiness put you off.",
    }
    levels = {
        "beginner": "You are new to most topics: jargon you do not know confuses you, and you need plain words.",
        "expert": "You are an expert: basic explanations bore you, and you want technical depth and precise terms.",
    }
    return " ".join((lengths[length], tones[tone], levels[expertise]))


STYLE_PERSONAS: dict[str, str] = {
    f"{length}_{tone}_{expertise}": _persona(length, tone, expertise)
    for length in ("concise", "detailed")
    for tone in ("casual", "professional")
    for expertise in ("beginner", "expert")
}
STYLE_PERSONAS.update(
    {
        "no_emojis": "You dislike emojis and decorative symbols in answers and say so whenever you see them.",
        "use_emojis": "You enjoy lively answers sprinkled with fitting emojis; plain, dry text feels cold to you.",
        "less_filler_praise_sycophancy": (
            "You dislike flattery and filler: openings like 'Great question!', praise of you, hedging and "
            "pleasantries waste your time. You want the substance only."
        ),
        "answer_directly_reduce_formatting": (
            "You want the answer in the first sentence, in plain prose. Headers, bullet lists, bold text and "
            "other heavy formatting get in your way."
        ),
        "more_structure_formatting": (
            "You skim: you want answers organised with headings, bullet points and short paragraphs, never a "
            "wall of text."
        ),
        "poetic": "You love poetry and want answers written in verse, with imagery and rhythm, not flat prose.",
        "humorous": "You like a light, witty tone with a joke or two; dry, humourless answers bore you.",
        "socratic": (
            "You want to learn by thinking: you prefer answers that guide you with questions and hints over "
            "answers that hand you the solution."
        ),
        "skeptical_evidence_seeking": (
            "You distrust unsupported claims: you want sources, evidence, numbers and stated uncertainty."
        ),
        "child_friendly": "You are a curious ten-year-old: you need simple words, short sentences and examples.",
    }
)

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


def validate_style(style: str) -> str:
    """Return `style` if it names a persona; an unknown style lists the known ones."""
    if style not in STYLE_PERSONAS:
        raise ValueError(f"Unknown style {style!r}. Known styles: {', '.join(sorted(STYLE_PERSONAS))}")
    return style


def user_system_prompt(style: str) -> str:
    return USER_SYSTEM_TEMPLATE.format(persona=STYLE_PERSONAS[validate_style(style)])


def user_messages(style: str, prompt: str, completion: str) -> list[dict[str, str]]:
    """The conversation a simulator sees: the persona as system prompt, the exchange to react to as user turn."""
    return [
        {"role": "system", "content": user_system_prompt(style)},
        {"role": "user", "content": USER_TURN_TEMPLATE.format(prompt=prompt, completion=completion)},
    ]


class UserSimulator(abc.ABC):
    """Writes the simulated user's next message for each (request, answer) pair.

    An empty string means "no usable feedback" (an empty reply, or a request that failed for good): the
    trainer masks that sample's advantage to zero rather than learning from invented feedback.
    """

    style: str

    @abc.abstractmethod
    def generate_feedback(self, prompts: list[str], completions: list[str]) -> list[str]:
        """One message per pair, in input order."""

    def pop_metrics(self) -> dict[str, float]:
        """Metrics accumulated since the last call (token counts, cost, failures), then reset."""
        return {}

    def settings(self) -> dict:
        """The settings an evaluation needs to reproduce this user; never contains a secret."""
        return {"class": type(self).__name__, "style": self.style, "system_prompt": user_system_prompt(self.style)}


class StyleUserSimulator(UserSimulator):
    """A local Hugging Face chat model playing the user (Qwen3-8B in the paper's TL;DR runs).

    Every process of a multi-GPU run holds its own copy on its own device and answers for its own samples,
    so no rank waits on another.
    """

    def __init__(
        self,
        model_name_or_path: str,
        style: str,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        batch_size: int = 8,
        device: Optional[torch.device | str] = None,
        dtype: torch.dtype | str = "auto",
        chat_template_kwargs: Optional[dict] = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.style = validate_style(style)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name_or_path = model_name_or_path
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
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

    @torch.no_grad()
    def generate_feedback(self, prompts: list[str], completions: list[str]) -> list[str]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [
                self.tokenizer.apply_chat_template(
                    user_messages(self.style, p, c),
                    tokenize=False,
                    add_generation_prompt=True,
                    **self.chat_template_kwargs,
                )
                for p, c in zip(prompts[start : start + self.batch_size], completions[start : start + self.batch_size])
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            sampling = (
                {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
            )
            output = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies.extend(text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return replies

    def settings(self) -> dict:
        return {
            **super().settings(),
            "model_name_or_path": self.model_name_or_path,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "chat_template_kwargs": self.chat_template_kwargs,
        }
