"""Adapter versions on disk, and the PEFT models that hold them.

A version is a standard PEFT adapter folder (adapter_config.json, adapter_model.safetensors; vLLM and PEFT load it
as it is) plus optimizer.pt, the update's AdamW state, so a restarted learner continues where the last published
update left off. A version is written under a temporary name, synced, then renamed into place, and only then recorded
in the store: a crash leaves either no folder or an unrecorded one, which the next start removes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def resolve_device(device: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def lora_config(args, adapter_path: Optional[str]) -> LoraConfig:
    """The starting adapter's config, or a new one from the options (the authors' live LoRA by default)."""
    if adapter_path:
        return PeftConfig.from_pretrained(adapter_path)
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.target_modules, bias="none", task_type="CAUSAL_LM")


def peft_model(model_name_or_path: str, config: LoraConfig, slot: str, *, device: torch.device,
               dtype: torch.dtype) -> PeftModel:
    """The base model with one LoRA slot; adapters are added and filled by name afterwards."""
    base = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype).to(device)
    return get_peft_model(base, config, adapter_name=slot)


def load_weights(model: PeftModel, slot: str, folder: str, config: LoraConfig) -> None:
    """Fill `slot` (added first if the model lacks it) with the weights of an adapter folder."""
    if slot not in model.peft_config:
        model.add_adapter(slot, config)
    result = set_peft_model_state_dict(model, load_file(str(Path(folder) / WEIGHTS_NAME)), adapter_name=slot)
    missing = [k for k in result.missing_keys if "lora_" in k and f".{slot}." in k]
    if missing:
        raise ValueError(f"{folder}: the adapter lacks {len(missing)} weights of this model, e.g. {missing[0]}")


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AdapterFiles:
    """The version folders under `root`: root/<adapter>/v<version>/."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, adapter: str, version: int) -> Path:
        return self.root / adapter / f"v{version}"

    def save(self, model: PeftModel, slot: str, adapter: str, version: int,
             optimizer: Optional[torch.optim.Optimizer], extra: Optional[dict[str, dict]] = None) -> str:
        """Write a version atomically and return its folder (recording it in the store is the caller's next step).
        `extra` maps file names to more tensors to keep with it (an EMA teacher's state)."""
        final = self.folder(adapter, version)
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
        for stale in (tmp, final):  # never recorded, or this version would not be written again
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = get_peft_model_state_dict(model, adapter_name=slot)
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
        model.peft_config[slot].save_pretrained(str(tmp))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
        for name, tensors in (extra or {}).items():
            save_file(tensors, str(tmp / name))
        _fsync_tree(tmp)
        os.rename(tmp, final)
        _fsync_tree(final.parent)
        return str(final)

    def load_optimizer(self, folder: str, optimizer: torch.optim.Optimizer) -> bool:
        path = Path(folder) / OPTIMIZER_NAME
        if not path.is_file():
            return False
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return True

    def remove_unrecorded(self, recorded: set[str]) -> list[str]:
        """Delete version folders the store does not know (a crash between writing and recording them)."""
        removed = []
        for folder in sorted(self.root.glob("*/*")):
            if folder.is_dir() and str(folder) not in recorded:
                shutil.rmtree(folder)
                removed.append(str(folder))
        if removed:
            logger.info("Removed %d adapter folders no published version records: %s", len(removed), removed)
        return removed

    def remove_adapter(self, adapter: str) -> None:
        shutil.rmtree(self.root / adapter, ignore_errors=True)
