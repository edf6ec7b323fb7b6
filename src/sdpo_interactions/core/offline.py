"""Offline SDPO: learn from logged conversations, where y is the assistant's logged answer and o the user's real
next message. No generation and no simulator; everything from the hindsight context on is the shared core's
(trainer.SDPOTrainerCore).

y was not sampled from the policy being trained, so there is no behaviour policy to correct for: the update raises
or lowers the likelihood of each logged token by how much the user's reply made it more or less likely in hindsight,
the signal-weighted log-likelihood that is the authors' offline update.
"""

from __future__ import annotations

from typing import Any

from sdpo_interactions.core.config import OfflineSDPOConfig
from sdpo_interactions.core.trainer import SDPOTrainerCore


class OfflineSDPOTrainer(SDPOTrainerCore):
    """SDPO on a dataset of (prompt messages, logged answer, the user's next message) samples.

    The dataset has columns `prompt` (chat messages up to the user turn that y answers), `completion` (y) and
    `feedback` (o), as `conversations.load_conversation_dataset` makes them.
    """

    _tag_names = ["trl", "sdpo", "offline-sdpo"]
    config_class = OfflineSDPOConfig
    answers_from_policy = False

    def _answers_and_feedback(self, inputs: list[dict[str, Any]]):
        missing = {"prompt", "completion", "feedback"} - set(inputs[0])
        if missing:
            raise ValueError(f"OfflineSDPOTrainer needs prompt, completion and feedback columns; missing {sorted(missing)}")
        messages = [x["prompt"] for x in inputs]
        answers = self._fixed_answers(messages, [x["completion"] for x in inputs])
        return messages, answers, [x["feedback"] for x in inputs], None  # no user to wait for

    def feedback_source_settings(self) -> dict:
        return {"feedback_source": "logged conversations", "style": None, "persona": None}
