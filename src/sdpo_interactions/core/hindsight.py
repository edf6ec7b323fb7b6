"""The hindsight context: the student's conversation with the user's next message appended to the last user turn,
rendered exactly as the policy reads it. The teacher scores the very same answer tokens after this context."""

from __future__ import annotations

from typing import Callable, Optional

from sdpo_interactions.prompts import last_user_text, with_last_user_text

DEFAULT_HINDSIGHT_TEMPLATE = (
    "\n\n[What follows is the next message I will send after reading your answer. It comes from the future: "
    "use it as guidance for how to answer my request above.]\n{feedback}"
)


def template_problems(template: str) -> list[str]:
    """What is wrong with a hindsight template, checked before any model loads (a stray brace would only fail at the
    first feedback, after generation)."""
    try:
        template.format(feedback="")
    except (KeyError, IndexError, ValueError) as err:
        return [f"hindsight_template may contain only the placeholder {{feedback}} (double other braces): {err!r}"]
    return [] if "{feedback}" in template else ["hindsight_template must contain the placeholder {feedback}"]


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


class ChatContexts:
    """Renders student and teacher contexts with the run's chat template settings (Qwen3 thinking off by default),
    so that the text the teacher scores after is the text the student's answer followed, plus `o`."""

    def __init__(self, tokenizer, *, chat_template_kwargs: dict, hindsight_template: str,
                 max_teacher_prompt_length: Optional[int]):
        self.tokenizer = tokenizer
        self.chat_template_kwargs = chat_template_kwargs
        self.hindsight_template = hindsight_template
        self.max_teacher_prompt_length = max_teacher_prompt_length

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.token_ids([text])[0])

    def _drop_request_tail(self, request: str, n_tokens: int) -> str:
        ids = self.token_ids([request])[0]
        return self.tokenizer.decode(ids[: max(len(ids) - n_tokens, 0)])

    def teacher_context(self, messages: list[dict[str, str]], feedback: str) -> tuple[str, bool]:
        """The exact text placed before y in the teacher pass, and whether its request had to be shortened."""
        def render(request: str) -> str:
            return self.render(hindsight_messages(with_last_user_text(messages, request), feedback,
                                                  self.hindsight_template))

        return fit_request(last_user_text(messages), render, self.count_tokens, self.max_teacher_prompt_length,
                           self._drop_request_tail)
