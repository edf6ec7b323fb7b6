"""Learning live from real users: an OpenAI-compatible chat server whose users' follow-ups train a LoRA adapter.

A reply the server wrote, followed by the user's next message, is one SDPO sample (x, y, o). The pieces:
`settings` (the command line's options and keys), `store` (SQLite in WAL mode: conversations, generations, samples,
updates, adapter versions), `pairing` (which request makes a sample), `protocol` (the OpenAI wire format and the
limits), `engine` (batched generation with the sampling log-probs), `learner` (the background SDPO updates),
`monitors` (the safeguards an update must pass to be published), `adapters` (versions written atomically),
`telemetry` (Prometheus metrics), `export` (the offline conversations format) and `server` (the HTTP app and the
web chat page in `web/`). docs/live.md shows how they fit together.
"""
