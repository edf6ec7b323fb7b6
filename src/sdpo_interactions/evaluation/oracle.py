"""The in-context oracle: the baseline model told the persona in its system prompt, which is what a learned
personalisation is compared against (the paper's Fig. 5; the authors' `--in_context_evaluation`). Its answers are
judged against the plain baseline's, by the same judge with the same prompts, so its win rate is the reference a
trained checkpoint's win rate is read against."""

from __future__ import annotations

ORACLE_PERSONA_BLOCK = "The user you are answering has the following profile, written as addressed to them:\n{persona}"


def oracle_system_prompt(system_prompt: str, persona: str) -> str:
    """The run's system prompt with the persona after it (the persona alone when the run has none)."""
    block = ORACLE_PERSONA_BLOCK.format(persona=persona)
    return f"{system_prompt}\n\n{block}" if system_prompt else block


def with_persona_prompt(messages: list[dict[str, str]], persona: str) -> list[dict[str, str]]:
    """A held-out prompt as the oracle sees it: its system turn (the run's, or a logged conversation's own) with the
    persona appended, or the persona as a new system turn."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": oracle_system_prompt(messages[0]["content"], persona)}, *messages[1:]]
    return [{"role": "system", "content": oracle_system_prompt("", persona)}, *messages]
