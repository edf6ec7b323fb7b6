"""The background trainer. It takes an adapter's pending samples in batches (a full batch, or whatever has waited
`max_sample_wait_seconds`, never sooner than `min_seconds_between_updates` after that adapter's last update), makes
one SDPO update, runs the monitors, and publishes the new version only if none tripped: written atomically, recorded
with its samples in one transaction, then swapped into the serving model between two batches. A tripped or failed
update is rolled back to the last published weights and optimizer state, which keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Union

import torch

from sdpo_interactions.live import monitors
from sdpo_interactions.live.adapters import AdapterFiles, load_weights
from sdpo_interactions.live.engine import SHARED, Engine
from sdpo_interactions.live.step import TEACHER_STATE_NAME, SDPOUpdate
from sdpo_interactions.live.store import Store
from sdpo_interactions.live.telemetry import Telemetry
from sdpo_interactions.live.vllm_engine import VllmEngine

logger = logging.getLogger(__name__)


class TrainingModel:
    """The learner's PEFT model: one slot per adapter, each with its own AdamW, loaded from its latest published
    version when first needed (a user's new adapter starts from the shared one's first version)."""

    def __init__(self, model, args, store: Store, files: AdapterFiles, lora_config):
        self.model, self.args, self.store, self.files, self.lora_config = model, args, store, files, lora_config
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def activate(self, adapter: str) -> torch.optim.Optimizer:
        """Make `adapter` the trained slot, loading it first if needed; returns its optimizer."""
        if adapter not in self.optimizers:
            self.restore(adapter)
        self.model.set_adapter(adapter)
        return self.optimizers[adapter]

    def restore(self, adapter: str) -> None:
        """The slot's weights and optimizer state as last published (the rollback of an unpublished update)."""
        published = self.store.published_versions()
        folder = self.published_folder(adapter)
        load_weights(self.model, adapter, folder, self.lora_config)
        self.model.set_adapter(adapter)  # PEFT marks only the active slot's weights trainable
        params = [p for name, p in self.model.named_parameters() if f".{adapter}." in name and "lora_" in name]
        optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        if adapter in published:
            self.files.load_optimizer(folder, optimizer)
        self.optimizers[adapter] = optimizer

    def next_version(self, adapter: str) -> int:
        published = self.store.published_versions()
        return published[adapter][0] + 1 if adapter in published else 1

    def save(self, adapter: str, version: int, extra: dict[str, dict]) -> str:
        return self.files.save(self.model, adapter, adapter, version, self.optimizers[adapter], extra)

    def published_folder(self, adapter: str) -> str:
        published = self.store.published_versions()
        return (published[adapter] if adapter in published else published[SHARED])[1]

    def drop(self, adapter: str) -> None:
        if adapter in self.optimizers and adapter != SHARED:
            del self.optimizers[adapter]
            self.model.delete_adapter(adapter)


class Learner:
    """The thread that runs updates; `lock` is held during each, so a user's deletion never meets a half update."""

    def __init__(self, args, store: Store, training: TrainingModel, update: SDPOUpdate,
                 engine: Union[Engine, VllmEngine], telemetry: Telemetry):
        self.args, self.store, self.training, self.update = args, store, training, update
        self.engine, self.telemetry = engine, telemetry
        self.limits = monitors.bounds(args)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sdpo-live-learner", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=120)

    def notify(self) -> None:
        """A sample arrived: look again now rather than at the next poll."""
        self.wake.set()

    def _loop(self) -> None:
        a = self.args
        while not self.stopping.is_set():
            adapter, wait = self.store.due_adapter(a.samples_per_update, a.max_sample_wait_seconds,
                                                   a.min_seconds_between_updates, time.time())
            if adapter is None:
                self.wake.wait(timeout=min(max(wait, 0.05), 1.0))
                self.wake.clear()
                continue
            with self.lock:
                try:
                    self.run_update(adapter)
                except Exception:  # a rollback that failed too: logged, the next poll tries again
                    logger.exception("The learner could not finish an update of adapter %s", adapter)
                    self.stopping.wait(timeout=5.0)

    def run_update(self, adapter: str) -> str:
        """One update of `adapter`: published, rejected (a monitor tripped) or failed (an error); returns which."""
        started = time.perf_counter()
        update_id, samples = self.store.claim(adapter, self.args.samples_per_update)
        if not samples:  # the user was deleted meanwhile
            self.store.reject(update_id, "failed", "no pending samples", monitors=[], metrics={})
            return "failed"
        try:
            optimizer = self.training.activate(adapter)
            batch = self.update.batch(samples)
            metrics = self.update.step(batch, optimizer)
            found = self._measure(update_id, batch, metrics)
        except Exception as err:  # recorded and logged; the last published version keeps serving
            logger.exception("Update %d of adapter %s failed; its %d samples are rejected", update_id, adapter,
                             len(samples))
            self._roll_back(adapter)
            self.store.reject(update_id, "failed", repr(err), monitors=[], metrics={})
            self.telemetry.update_finished("failed", time.perf_counter() - started, [])
            return "failed"
        return self._conclude(update_id, adapter, samples[0].user_id, found, metrics, time.perf_counter() - started)

    def _roll_back(self, adapter: str) -> None:
        self.training.restore(adapter)
        self.update.restore_teacher(self.training.published_folder(adapter))

    def _measure(self, update_id: int, batch, metrics: dict) -> list[monitors.Reading]:
        values = {"entropy_ratio": self.update.entropy_ratio(batch),
                  "feedback_specificity": metrics.get("feedback_specificity")}
        if any(self.limits[name] != (None, None) for name in ("length_ratio", "repetition_increase")):
            values.update(self.update.probe(batch, seed=self.args.seed + update_id))
        return monitors.readings(values, self.limits)

    def _conclude(self, update_id: int, adapter: str, user_id: str, found: list[monitors.Reading], metrics: dict,
                  seconds: float) -> str:
        monitors.log_readings(update_id, adapter, found)
        record = [r.as_dict() for r in found]
        tripped = [r.name for r in found if r.tripped]
        if tripped:
            self._roll_back(adapter)
            self.store.reject(update_id, "rejected", "monitor tripped: " + ", ".join(tripped), monitors=record,
                              metrics=metrics)
            self.telemetry.update_finished("rejected", seconds, found)
            return "rejected"
        version = self.training.next_version(adapter)
        state = self.update.follow_student(version)
        folder = self.training.save(adapter, version, {TEACHER_STATE_NAME: state} if state else {})
        owner: Optional[str] = None if adapter == SHARED else user_id
        self.store.publish(update_id, adapter, version, folder, owner, monitors=record, metrics=metrics)
        self.engine.publish(adapter, version, folder).result(timeout=600)
        logger.info("update %d: adapter %s version %d published (%d samples, loss %.4f)", update_id, adapter,
                    version, metrics["samples"], metrics["loss"])
        self.telemetry.update_finished("published", seconds, found)
        return "published"
