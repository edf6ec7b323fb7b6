"""train.py's real main() with a user whose every reply names the persona it was written under, for
test_persona_schedule_run.py (alone or under `torchrun --nproc_per_node 2`):

    python tests/persona_schedule_entry.py --record_dir rec [any train.py flag, --style_schedule among them]

Everything but the user is the real command line: --style_schedule's parsing and step check, the trainer, its
persona-schedule callback, the token log, checkpoints, resume. Each process appends every call of its user to
`<record_dir>/calls-rank<R>.jsonl`: the persona it had at that call, the step the trainer was at and the requests.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

import sdpo_interactions.cli.train as train
from sdpo_interactions.testing.runs import naming_feedback
from sdpo_interactions.users.base import UserSimulator


@dataclass
class RecordArguments:
    record_dir: str = field(metadata={"help": "Folder for the per-rank JSONL records of the user's calls."})


def persona_reply(style: str, request: str) -> str:
    """What the recording user says: the request it answers and the persona it answers as."""
    return f"{naming_feedback(request)} [as {style}]"


class PersonaRecordingUser(UserSimulator):
    def __init__(self, style: str, persona: str, record_dir: Path):
        self.style, self.persona = style, persona
        self.path = record_dir / f"calls-rank{os.environ.get('RANK', '0')}.jsonl"
        self.trainer = None  # set once the trainer exists: the step of each call is read from it

    def generate_feedback(self, prompts, completions):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"style": self.style, "persona": self.persona, "requests": list(prompts),
                                "global_step": self.trainer.state.global_step}) + "\n")
        return [persona_reply(self.style, p) for p in prompts]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    script_args, training_args, model_args, record = TrlParser((*train.ARGUMENTS, RecordArguments)) \
        .parse_args_and_config()
    record_dir = Path(record.record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    user = PersonaRecordingUser(script_args.style, script_args.persona, record_dir)
    train.build_user_simulator = lambda args, chat_template_kwargs: user
    trainer_class = train.OnlineSDPOTrainer

    class Trainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            user.trainer = self

    train.OnlineSDPOTrainer = Trainer
    train.main(script_args, training_args, model_args)


if __name__ == "__main__":
    main()
