"""Per-token signal heatmaps: the command line of sdpo_interactions.cli.visualize_signal (also installed as `sdpo-visualize-signal`)."""

from sdpo_interactions.cli.visualize_signal import cli

if __name__ == "__main__":
    cli()
