"""Prompt and conversation files of the paper's datasets: the command line of sdpo_interactions.cli.prepare_data (also installed as `sdpo-prepare-data`)."""

from sdpo_interactions.cli.prepare_data import cli

if __name__ == "__main__":
    cli()
