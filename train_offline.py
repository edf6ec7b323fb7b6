"""Offline SDPO on logged conversations: the command line of sdpo_interactions.cli.train_offline (also installed as `sdpo-train-offline`)."""

from sdpo_interactions.cli.train_offline import cli

if __name__ == "__main__":
    cli()
