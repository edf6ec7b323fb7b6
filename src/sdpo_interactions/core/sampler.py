"""The training data order, made replayable: a resumed run sees the samples the uninterrupted run saw."""

from __future__ import annotations

from trl.trainer.utils import RepeatSampler


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler, with each epoch's order drawn from (seed, epoch) alone.

    TRL's sampler draws epoch after epoch from one generator, which a resumed run recreates from the seed: resumed
    in epoch k > 0, it replays epoch 0's order. The Trainer (through accelerate) calls `set_epoch` before every
    epoch, resumed or not, so seeding there makes a resumed run see the data the uninterrupted run saw.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.seed is not None:
            self.generator.manual_seed(self.seed + epoch)

    @classmethod
    def for_trainer(cls, dataset, args, *, shuffle: bool) -> "EpochSeededRepeatSampler":
        """The sampler GRPOTrainer builds for `args` (a GRPOConfig): each prompt `num_generations` times within a
        generation batch, each generation batch `num_iterations * steps_per_generation` times."""
        return cls(
            data_source=dataset,
            mini_repeat_count=args.num_generations,
            batch_size=args.generation_batch_size // args.num_generations,
            repeat_count=args.num_iterations * args.steps_per_generation,
            shuffle=shuffle,
            seed=args.seed,
        )
