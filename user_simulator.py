"""The simulated users live in the installable package `sdpo_interactions` (src/sdpo_interactions/users/):
the interface `UserSimulator` and the local-model user in users/base.py, the users behind a chat API (Claude, any
OpenAI-compatible server) in users/api.py, and the personas (`STYLE_PERSONAS`, from personas.yaml) in
sdpo_interactions/personas.py. This file re-exports them for code run from this folder.
"""

from sdpo_interactions import StyleUserSimulator, UserSimulator
from sdpo_interactions.personas import STYLE_PERSONAS

__all__ = ["STYLE_PERSONAS", "StyleUserSimulator", "UserSimulator"]
