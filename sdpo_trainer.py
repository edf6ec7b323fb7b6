"""The SDPO trainers live in the installable package `sdpo_interactions` (src/sdpo_interactions/):

- core/trainer.py   OnlineSDPOTrainer and OnlineSDPOConfig: generation -> user feedback -> hindsight -> loss
- core/offline.py   OfflineSDPOTrainer and OfflineSDPOConfig: the same core on logged conversations

This file re-exports them, so `from sdpo_trainer import OnlineSDPOTrainer` keeps working from the repository root;
elsewhere, `from sdpo_interactions import OnlineSDPOTrainer`.
"""

from sdpo_interactions import OfflineSDPOConfig, OfflineSDPOTrainer, OnlineSDPOConfig, OnlineSDPOTrainer

__all__ = ["OfflineSDPOConfig", "OfflineSDPOTrainer", "OnlineSDPOConfig", "OnlineSDPOTrainer"]
