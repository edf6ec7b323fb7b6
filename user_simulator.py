"""The simulated users live in the installable package `sdpo_interactions` (src/sdpo_interactions/users/):
the interface `UserSimulator` and the local-model user in users/base.py, the users behind a chat API (Claude, any
OpenAI-compatible server) in users/api.py. This file re-exports the first two for code run from this folder.
"""

from sdpo_interactions import StyleUserSimulator, UserSimulator

__all__ = ["StyleUserSimulator", "UserSimulator"]
