"""The precision a launch will train in, printed by the launch scripts before anything starts: the weights' dtype,
the optimizer, the launch path, and what keeps updates smaller than a bf16 weight's spacing (docs/precision.md).

It reads what the run reads, in the same order: the flags after `--` (`--name value` or `--name=value`) over the
recipe (`--config`), and the accelerate config file for the launch path. `precision.compensation` answers the same
question inside the run, from the optimizer it built; this answers it from the settings, torch-free, so that a dry
run is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from sdpo_interactions.schedule import ScheduleError, print_report, read_yaml_mapping

# The `optim` values whose optimizer (torchao's AdamW8bit/AdamW4bit) takes `bf16_stochastic_round` from `optim_args`.
STOCHASTIC_ROUNDING_OPTIMS = ("adamw_torch_8bit", "adamw_torch_4bit")
TRUE, FALSE = ("true", "1", "yes", "y"), ("false", "0", "no", "n")


def parse_optim_args(optim_args: Optional[str]) -> dict[str, str]:
    """transformers' `optim_args` string, "key=value,key=value", as a dict of lower-cased strings."""
    pairs = [item.split("=", 1) for item in (optim_args or "").replace(" ", "").split(",") if item]
    bad = [item for item in pairs if len(item) != 2]
    if bad:
        raise ValueError(f"optim_args must be key=value pairs separated by commas, got {optim_args!r}")
    return {key: value.lower() for key, value in pairs}


def _flag_bool(value: Optional[str], name: str) -> Optional[bool]:
    """TRL's boolean flags: `--name` alone is true, `--name false` false (string_to_bool's words)."""
    if value is None:
        return None
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ScheduleError(f"--{name}: expected true or false, got {value!r}")


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sdpo_interactions.precision_plan", allow_abbrev=False, exit_on_error=False,
        description="Print the precision a training launch trains in: the run's own flags (any others are ignored), "
                    "with --config read underneath them as train.py reads it.",
    )
    parser.add_argument("--config", help="the run's recipe (YAML of GRPOConfig fields)")
    parser.add_argument("--world_size", type=int, default=1, help="processes over all machines (1)")
    parser.add_argument("--accelerate_config", help="the accelerate config file of a launch of several processes")
    for name in ("dtype", "model_init_kwargs", "optim", "optim_args"):
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name)
    for name in ("bf16", "use_peft"):
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, nargs="?", const="true")
    try:
        args, _ = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ScheduleError(str(err)) from err
    return args


def weights_dtype(args: argparse.Namespace, recipe: dict) -> str:
    """The policy's dtype as `arguments.policy_init` sets it: --dtype, else the model_init_kwargs of the command line
    (which replace the recipe's whole), else the recipe's; transformers 4.57 loads float32 without one."""
    if args.dtype:
        return args.dtype
    if args.model_init_kwargs is not None:
        try:
            kwargs = json.loads(args.model_init_kwargs) or {}
        except json.JSONDecodeError as err:
            raise ScheduleError(f"--model_init_kwargs is not JSON: {err}") from err
    else:
        kwargs = recipe.get("model_init_kwargs") or {}
    return str(kwargs.get("dtype") or "float32")


def launch_path(args: argparse.Namespace) -> str:
    """accelerate's distributed type and mixed precision, from the config file of a launch of several processes."""
    if args.world_size <= 1:
        return "one process"
    if not args.accelerate_config:
        return "MULTI_GPU (accelerate's default)"
    config = read_yaml_mapping(args.accelerate_config, "accelerate config")
    return f"{config.get('distributed_type', 'MULTI_GPU')} (mixed_precision {config.get('mixed_precision', 'no')})"


def optimizer_compensation(optim: str, optim_args: Optional[str]) -> Optional[str]:
    """What the optimizer these settings build does itself to keep updates smaller than a bf16 weight's spacing, in
    words, or None. A ValueError for an optim_args string that is not key=value pairs."""
    options = parse_optim_args(optim_args)
    if optim in STOCHASTIC_ROUNDING_OPTIMS and options.get("bf16_stochastic_round") == "true":
        return "bf16 stochastic rounding (torchao)"
    if optim == "stable_adamw" and options.get("kahan_sum", "true") == "true":
        return "Kahan summation (torch-optimi)"
    return None


def keeper(launch: str, dtype: str, optim: str, optim_args: str, use_peft: bool) -> str:
    """What keeps an update smaller than the weights' spacing, in words."""
    try:
        by_optimizer = optimizer_compensation(optim, optim_args)
    except ValueError as err:
        raise ScheduleError(str(err)) from err
    if launch.startswith("DEEPSPEED"):
        return "fp32 master weights in DeepSpeed's ZeRO partitions"
    if launch.startswith("FSDP"):
        return "fp32 master weights (accelerate upcasts the trainable weights for FSDP)"
    if use_peft:
        return "the LoRA adapters, which PEFT keeps in fp32"
    if dtype not in ("bfloat16", "float16", "bf16", "fp16"):
        return f"{dtype} weights"
    return by_optimizer or "nothing: steps under |w|/512 round away on bf16 weights"


def precision_lines(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    recipe = read_yaml_mapping(args.config, "recipe") if args.config else {}
    dtype = weights_dtype(args, recipe)
    optim = args.optim if args.optim is not None else str(recipe.get("optim") or "adamw_torch")
    optim_args = args.optim_args if args.optim_args is not None else str(recipe.get("optim_args") or "")
    bf16 = _flag_bool(args.bf16, "bf16")
    if bf16 is None and recipe.get("bf16") is not None:
        bf16 = bool(recipe["bf16"])
    use_peft = bool(_flag_bool(args.use_peft, "use_peft") or recipe.get("use_peft"))
    launch = launch_path(args)
    autocast = "on with a GPU, off on a CPU" if bf16 is None else ("on" if bf16 else "off")
    return [f"precision: weights {dtype}, optim {optim}{f' ({optim_args})' if optim_args else ''}, launch {launch}, "
            f"bf16 autocast {autocast}",
            f"  updates kept by: {keeper(launch, dtype, optim, optim_args, use_peft)}"], []


def main(argv: Optional[list[str]] = None) -> int:
    """Print the two precision lines; a bad setting is one `error:` line and status 2."""
    return print_report(lambda: precision_lines(parse_command_line(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
