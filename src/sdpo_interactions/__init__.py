"""SDPO from user interactions: a policy learns from the next message its user writes, re-scored in hindsight.

    from sdpo_interactions import OnlineSDPOConfig, OnlineSDPOTrainer, UserSimulator

The names below are imported on first use, so that `import sdpo_interactions.conversations` (data preparation)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "OnlineSDPOConfig": "sdpo_interactions.core.config",
    "OnlineSDPOTrainer": "sdpo_interactions.core.trainer",
    "OfflineSDPOConfig": "sdpo_interactions.core.config",
    "OfflineSDPOTrainer": "sdpo_interactions.core.offline",
    "UserSimulator": "sdpo_interactions.users.base",
    "StyleUserSimulator": "sdpo_interactions.users.base",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from sdpo_interactions.core.config import OfflineSDPOConfig, OnlineSDPOConfig
    from sdpo_interactions.core.offline import OfflineSDPOTrainer
    from sdpo_interactions.core.trainer import OnlineSDPOTrainer
    from sdpo_interactions.users.base import StyleUserSimulator, UserSimulator


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sdpo_interactions' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
