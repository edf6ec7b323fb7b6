"""Whether the update an optimizer step computes reaches the weights: a start-up check, a metric, and the optimizer
that keeps updates of bf16 weights (docs/precision.md has the measurements and the choice per launch path).

bf16 keeps 8 significant bits, so adding an update to a weight w changes it only when the update is larger than
about half a unit in the last place, |w| / 512; an Adam step moves each weight by about the learning rate. At the
recipes' 2e-6 to 5e-6, a bf16 weight over about 1e-3 in size does not move at all, and 99% of each step is lost.
Three things keep the update: fp32 weights (master copies, which DeepSpeed and FSDP's mixed precision keep by
themselves), Kahan summation (`optim: stable_adamw`), or stochastic rounding (torchao's AdamW with
`bf16_stochastic_round`, which rounds up or down with the probabilities that make the expected weight exact).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from transformers import Trainer, TrainerCallback

from sdpo_interactions.precision_plan import STOCHASTIC_ROUNDING_OPTIMS, optimizer_compensation, parse_optim_args

logger = logging.getLogger(__name__)

LOW_PRECISION = (torch.bfloat16, torch.float16)
# Below this share of the update surviving the rounding, the start-up check warns.
MIN_APPLIED = 0.9
# Weights the start-up check rounds; the metric's default sample.
CHECK_SAMPLE = 1 << 20
METRIC_SAMPLE = 4096
METRIC_NAME = "update_applied_ratio"  # W&B shows it as train/update_applied_ratio, beside train/loss


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------


def applied_fraction(weights: torch.Tensor, step: float) -> float:
    """The share of an update of `step` on every element that is left after storing `weights + step` back in the
    weights' own dtype, rounding to nearest as an optimizer's in-place add does. weights: any shape."""
    before = weights.detach().reshape(-1).float()
    after = (before + step).to(weights.dtype).float()
    return ((after - before).sum() / (step * before.numel())).item()


def applied_ratio(applied: torch.Tensor, computed: torch.Tensor) -> tuple[float, float]:
    """(<applied, computed>, <computed, computed>): their quotient is the part of the computed change that reached
    the weights (1: all of it; 0: none; a change rounded past the computed one counts above 1). Both: same shape."""
    applied, computed = applied.double(), computed.double()
    return (applied * computed).sum().item(), (computed * computed).sum().item()


def sample_positions(numels: list[int], n: int, seed: int) -> list[torch.Tensor]:
    """`n` element positions drawn uniformly over tensors of these sizes, as each tensor's sorted flat indices, so that
    every weight of the model is equally likely to be measured whatever tensor holds it."""
    sizes = torch.tensor(numels, dtype=torch.long)
    ends = sizes.cumsum(0)
    drawn = torch.randint(int(ends[-1]), (n,), generator=torch.Generator().manual_seed(seed)).sort().values
    owner = torch.searchsorted(ends, drawn, right=True)
    return [drawn[owner == i] - (ends[i] - sizes[i]) for i in range(len(numels))]


# ---------------------------------------------------------------------------------------------------------------
# What compensates, and the start-up check
# ---------------------------------------------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def uses_deepspeed(args) -> bool:
    """DeepSpeed from TrainingArguments or from an accelerate config (accelerate launch exports the variable)."""
    return bool(args.deepspeed) or _env_true("ACCELERATE_USE_DEEPSPEED")


def compensation(args, optimizer=None) -> Optional[str]:
    """What keeps small updates of bf16/fp16 weights in this setup, in words, or None. With `optimizer` (the one the
    Trainer built), read from it; without it (before train() builds one), from `args`."""
    if uses_deepspeed(args):
        return "DeepSpeed's optimizer steps fp32 master copies of the weights"
    if (args.fsdp or _env_true("ACCELERATE_USE_FSDP")) and (args.bf16 or args.fp16):
        return "FSDP under mixed precision upcasts the trainable weights to fp32 (accelerate)"
    if optimizer is None:
        return optimizer_compensation(getattr(args.optim, "value", args.optim), args.optim_args)
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
    if getattr(inner, "bf16_stochastic_round", False):
        return "bf16 stochastic rounding (torchao)"
    # optimi's kahan_sum None means "on for low-precision weights", decided at the first step.
    if type(inner).__module__.startswith("optimi") and all(g.get("kahan_sum") is not False for g in inner.param_groups):
        return "Kahan summation (torch-optimi)"
    return None


def check_update_precision(model: torch.nn.Module, args, optimizer=None) -> Optional[str]:
    """A warning when the trainable weights are bf16/fp16, nothing compensates, and a step of the learning rate
    mostly rounds away; None otherwise. The share kept is measured by rounding w + learning_rate on a fixed sample of
    the weights (an Adam step moves each weight by about the learning rate, at most a few times it)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    low = [p for p in trainable if p.dtype in LOW_PRECISION]
    if not low or compensation(args, optimizer) is not None:
        return None
    positions = sample_positions([p.numel() for p in low], CHECK_SAMPLE, seed=0)
    sample = torch.cat([p.detach().reshape(-1)[i.to(p.device)].cpu() for p, i in zip(low, positions)])
    kept = applied_fraction(sample, args.learning_rate)
    if kept >= MIN_APPLIED:
        return None
    optim = getattr(args.optim, "value", args.optim)
    return (
        f"{len(low)} of {len(trainable)} trainable tensors are {low[0].dtype} and nothing compensates (optim={optim}): "
        f"a step of the learning rate {args.learning_rate:g} survives rounding as {kept:.1%} of itself, so about "
        f"{1 - kept:.0%} of every update is lost. Keep bf16 weights with stochastic rounding (optim: adamw_torch_8bit, "
        "optim_args: bf16_stochastic_round=true, the recipes' setting), or load fp32 weights (--dtype float32; bf16 "
        "autocast still computes in bf16), or use DeepSpeed (fp32 master weights). See docs/precision.md."
    )


def optimizer_cls_and_kwargs(args, model: Optional[torch.nn.Module] = None) -> Optional[tuple[type, dict]]:
    """The optimizer for `Trainer.optimizer_cls_and_kwargs` when `optim_args` asks for `bf16_stochastic_round`
    (transformers builds torchao's AdamW8bit/AdamW4bit without any optim_args); None leaves it to transformers.
    Another `optim` on the command line over a recipe's optim_args ignores them, with a warning."""
    options = parse_optim_args(args.optim_args)
    if "bf16_stochastic_round" not in options:
        return None
    if args.optim not in STOCHASTIC_ROUNDING_OPTIMS:
        logger.warning("optim_args bf16_stochastic_round is ignored: only optim %s (torchao) rounds stochastically, "
                       "optim is %s", " or ".join(STOCHASTIC_ROUNDING_OPTIMS), getattr(args.optim, "value", args.optim))
        return None
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls, {**kwargs, "bf16_stochastic_round": options["bf16_stochastic_round"] == "true"}


# ---------------------------------------------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------------------------------------------


def adam_betas(group: dict) -> Optional[tuple[float, float]]:
    """An Adam param group's betas (torch, bitsandbytes and torchao name them `betas`, torch-optimi `beta1`/`beta2`),
    or None for an optimizer without them."""
    if "betas" in group:
        return tuple(group["betas"])
    if "beta1" in group and "beta2" in group:
        return group["beta1"], group["beta2"]
    return None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP2 (DTensor) parameter or gradient; any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class _Shadow:
    """The fp32 Adam moments of one parameter's sampled elements: AdamW replayed on them from the real gradients."""

    def __init__(self, param: torch.Tensor, group: dict, index: torch.Tensor):
        self.param, self.group, self.index = param, group, index.to(_local(param).device)
        self.exp_avg = torch.zeros(len(index), dtype=torch.float32, device=self.index.device)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.steps = 0
        self.before: Optional[torch.Tensor] = None
        self.grad: Optional[torch.Tensor] = None

    def read(self, tensor: torch.Tensor) -> torch.Tensor:
        return _local(tensor).detach().reshape(-1)[self.index].float()

    def before_step(self) -> None:
        grad = self.param.grad
        self.grad = None if grad is None else self.read(grad)
        self.before = self.read(self.param)

    def computed(self) -> torch.Tensor:
        """AdamW's change (torch's formula) from the moments, the gradient and the weights before the step."""
        beta1, beta2 = adam_betas(self.group)
        lr, eps, decay = float(self.group["lr"]), self.group["eps"], self.group.get("weight_decay", 0.0)
        self.steps += 1
        self.exp_avg.mul_(beta1).add_(self.grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        denom = (self.exp_avg_sq / (1 - beta2**self.steps)).sqrt_().add_(eps)
        return -lr * (self.exp_avg / (1 - beta1**self.steps) / denom + decay * self.before)

    def after_step(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(applied, computed) changes of the sampled elements, or None when the parameter had no gradient."""
        if self.grad is None:
            return None
        return self.read(self.param) - self.before, self.computed()


class UpdatePrecisionCallback(TrainerCallback):
    """Warns at the start when the update will round away (`check_update_precision` on the Trainer's own optimizer),
    then logs `update_applied_ratio`: the part of the change the optimizer computed that reached the weights.

    How "computed" is known cheaply: a fixed sample of weight elements (METRIC_SAMPLE, drawn uniformly over the
    trainable weights at the start) keeps fp32 Adam moments of its own. Before each optimizer step the callback reads
    the sampled weights and their (already clipped) gradients; after it, it replays torch's AdamW in fp32 on them with
    the step's learning rate, betas, eps and weight decay, which gives the change an fp32 AdamW computes, and reads the
    weights again for the change applied. The logged value is <applied, computed> / <computed, computed> summed over
    the steps since the last log: 1 when every update lands, about 0.01 for bf16 weights at 2e-6. A few kB of state,
    two gathers of 4096 elements per step. For AdamW (torch, bitsandbytes 8-bit, torchao) the replay is the fp32
    reference of the same update; an 8-bit optimizer's quantized moments differ from it by a percent or so, and
    stable_adamw's update clipping is not replayed. Optimizers without Adam betas, and DeepSpeed (whose fp32 master
    copies live in its own partitions), are not measured; that is logged once.
    """

    def __init__(self, sample_size: int = METRIC_SAMPLE, seed: int = 0):
        self.sample_size, self.seed = sample_size, seed
        self.shadows: list[_Shadow] = []
        self.sums = [0.0, 0.0]

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        message = check_update_precision(model, args, optimizer)
        if message and state.is_world_process_zero:
            logger.warning(message)
        groups = getattr(optimizer, "param_groups", [])
        skip = ("DeepSpeed keeps the fp32 master weights in its own partitions" if uses_deepspeed(args)
                else None if groups and all(adam_betas(g) for g in groups)
                else f"{type(getattr(optimizer, 'optimizer', optimizer)).__name__} is not an Adam optimizer")
        if skip:
            logger.info("%s is not measured: %s", METRIC_NAME, skip)
            return
        pairs = [(p, g) for g in groups for p in g["params"] if p.requires_grad and _local(p).numel()]
        if not pairs:
            return
        positions = sample_positions([_local(p).numel() for p, _ in pairs], self.sample_size, self.seed)
        self.shadows = [_Shadow(p, g, i) for (p, g), i in zip(pairs, positions) if len(i)]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for shadow in self.shadows:
            shadow.before_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        changes = [change for change in (shadow.after_step() for shadow in self.shadows) if change is not None]
        if changes:  # one device sync per step, whatever the number of sampled tensors
            applied, computed = applied_ratio(torch.cat([a for a, _ in changes]), torch.cat([c for _, c in changes]))
            self.sums = [self.sums[0] + applied, self.sums[1] + computed]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.sums[1] == 0:
            return
        logs[METRIC_NAME] = self.sums[0] / self.sums[1]
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1][METRIC_NAME] = logs[METRIC_NAME]
        self.sums = [0.0, 0.0]


def install_precision(trainer: Trainer) -> UpdatePrecisionCallback:
    """Give `trainer` the stochastic-rounding optimizer when its args ask for one, and the check and metric callback,
    first in line so that the reporting callbacks (W&B, the progress bar) see the metric. Call before train()."""
    chosen = optimizer_cls_and_kwargs(trainer.args, trainer.model)
    if chosen is not None:
        trainer.optimizer_cls_and_kwargs = chosen
    callback = UpdatePrecisionCallback()
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
