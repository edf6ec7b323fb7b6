"""The deterministic simulated users the tests share, in one place.

A fake user is fine where the test is about pairing, order or bookkeeping; the real users are tested on their own
(test_user_simulator.py, test_api_users.py, test_served_user.py). These live under tests/, not in the package: they
are for tests only, and pytest puts this folder on the import path of every test module (`from fakes import ...`).
What a process started by a test needs is in sdpo_interactions.testing (runs.py), which such a process can import.
"""

from sdpo_interactions.testing.runs import naming_feedback
from sdpo_interactions.users.base import UserSimulator

STYLE = "concise_casual_beginner"


class NamingUser(UserSimulator):
    """A reply that names the request it answers (testing.runs.naming_feedback), so a misplaced reply is visible;
    silent (an empty reply) on the requests in `silent_on`. It records every call it gets."""

    style = STYLE

    def __init__(self, silent_on=()):
        self.silent_on = set(silent_on)
        self.calls = []

    def generate_feedback(self, prompts, completions):
        self.calls.append((list(prompts), list(completions)))
        return ["" if p in self.silent_on else naming_feedback(p) for p in prompts]


class CannedUser(UserSimulator):
    """The same fixed reply to everything: for checkpoints that only need to come from real training steps."""

    style = STYLE
    persona = "You want one short line, no more. (The text this run trained with.)"
    reply = "Way too long, just give me one short line."

    def generate_feedback(self, prompts, completions):
        return [self.reply for _ in prompts]


class SameReplyUser(UserSimulator):
    """One reply for every answer, and no style: every answer's feedback is every other answer's too."""

    def generate_feedback(self, prompts, completions):
        return ["Shorter, please." for _ in prompts]
