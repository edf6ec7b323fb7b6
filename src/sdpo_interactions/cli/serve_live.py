"""Serve a policy to real users and learn from their follow-ups (docs/live.md).

    LIVE_API_KEY=... LIVE_ADMIN_KEY=... python -m sdpo_interactions.cli.serve_live \
        --model_name_or_path models/smollm2-135m-instruct --data_dir runs/live

An OpenAI-compatible server (/v1/chat/completions, /v1/models) and a web chat page at /. Every user message that
reacts to an answer of this server trains a LoRA adapter in the background. `--export_to FILE` writes the stored
conversations in the offline format (train_offline.py replays them) and exits without loading a model. The keys come
from the environment only; every input problem is reported before any model loads.
"""

from __future__ import annotations

import logging

from sdpo_interactions.cli.common import run_cli
from sdpo_interactions.live.settings import LiveArguments, LiveKeys
from sdpo_interactions.run_files import InputError

logger = logging.getLogger(__name__)


def export(args: LiveArguments) -> None:
    from sdpo_interactions.live.history import export_conversations
    from sdpo_interactions.live.service import store_path
    from sdpo_interactions.live.store import Store

    path = store_path(args.data_dir)
    if not path.is_file():
        raise InputError(f"--data_dir {args.data_dir}: no live store ({path.name}) there to export")
    store = Store(path)
    try:
        written, skipped = export_conversations(store, args.export_to)
    finally:
        store.close()
    logger.info("Wrote %d conversations to %s (%d branches left out: not in the offline format)", written,
                args.export_to, skipped)


def main(args: LiveArguments) -> None:
    if args.export_to:
        export(args)
        return
    keys = LiveKeys.from_environ()
    import uvicorn

    from sdpo_interactions.live.server import create_app
    from sdpo_interactions.live.service import LiveService

    app = create_app(LiveService.build(args, keys))
    base = f"http://{args.host}:{args.port}"
    logger.info("Web chat at %s/ ; OpenAI base URL %s/v1 (model %s)", base, base, args.served_model_name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


def cli() -> None:
    run_cli(main, LiveArguments)


if __name__ == "__main__":
    cli()
