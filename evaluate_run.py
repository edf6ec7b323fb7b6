"""Persona win rates of a run's checkpoints: the command line of sdpo_interactions.cli.evaluate (also installed as `sdpo-evaluate`)."""

from sdpo_interactions.cli.evaluate import cli

if __name__ == "__main__":
    cli()
