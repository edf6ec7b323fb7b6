"""Online SDPO training (simulated users): the command line of sdpo_interactions.cli.train (also installed as `sdpo-train`)."""

from sdpo_interactions.cli.train import cli

if __name__ == "__main__":
    cli()
