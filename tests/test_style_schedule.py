"""Persona schedules (users/style_schedule.py): parsing and the step arithmetic by hand, every problem at once, the
command line the scripts print with (torch-free), the flag's checks, the callback's switch at a step boundary, and
the real users (local model, served, Claude) writing their requests from the persona they are switched to."""

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdpo_interactions.personas import STYLE_PERSONAS
from sdpo_interactions.run_files import InputError
from sdpo_interactions.users.registry import UserArguments
from sdpo_interactions.users.style_schedule import (
    BatchArithmetic,
    Phase,
    StyleSchedule,
    parse_style_schedule,
)

REPO = Path(__file__).resolve().parents[1]
FLIP = "concise_casual_beginner:256,detailed_professional_expert"
# The authors' Qwen3-4B TL;DR batch: 4 answers a process, no accumulation, 4 processes: 16 interactions a step.
FOUR_BY_FOUR = BatchArithmetic(per_device_train_batch_size=4, gradient_accumulation_steps=1, world_size=4,
                               steps_per_generation=1)


# ------------------------------------------------------------------------------------------------ parsing
def test_a_schedule_is_styles_with_counts_and_a_last_style_without():
    phases = parse_style_schedule(" concise_casual_beginner:256 , detailed_professional_expert ")
    assert phases == (
        Phase("concise_casual_beginner", STYLE_PERSONAS["concise_casual_beginner"], 256),
        Phase("detailed_professional_expert", STYLE_PERSONAS["detailed_professional_expert"], None),
    )
    # The research code's misspelt name is accepted and stored under ours; a style may come back later.
    phases = parse_style_schedule("answer_direclty_reduce_formatting:16,poetic:32,answer_directly_reduce_formatting")
    assert [p.style for p in phases] == ["answer_directly_reduce_formatting", "poetic",
                                         "answer_directly_reduce_formatting"]


def test_every_problem_of_a_schedule_is_reported_at_once():
    with pytest.raises(InputError) as err:
        parse_style_schedule("grumpy:10,poetic,no_emojis:0,:5,humorous:7")
    message = str(err.value)
    assert message.startswith("--style_schedule 'grumpy:10,poetic,no_emojis:0,:5,humorous:7': ")
    for problem in ("entry 1: unknown style 'grumpy'", "entry 2 ('poetic') needs a count: STYLE:INTERACTIONS",
                    "entry 3 ('no_emojis:0'): the count must be a positive number of interactions",
                    "entry 4 (':5') names no style",
                    "entry 5 ('humorous:7'): the last persona lasts to the end of the run, so it takes no count",
                    "known styles: answer_directly_reduce_formatting"):
        assert problem in message
    with pytest.raises(InputError, match="at least two personas"):
        parse_style_schedule("poetic")


def test_a_persona_file_adds_styles_to_a_schedule(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("pirate: You want every answer in pirate speak.\n")
    phases = parse_style_schedule("pirate:8,poetic", str(mine))
    assert phases[0] == Phase("pirate", "You want every answer in pirate speak.", 8)


# ------------------------------------------------------------------------------------------------ steps, by hand
def test_the_flip_switches_after_sixteen_steps_of_sixteen_interactions():
    schedule = StyleSchedule.build(FLIP, FOUR_BY_FOUR)
    assert FOUR_BY_FOUR.interactions_per_step == 16 and FOUR_BY_FOUR.unit == 16
    assert schedule.end_steps == (16, None) and schedule.switch_steps == (16,)
    # Samples generated with 0..15 steps done are the first persona's; from 16 on, the second's.
    assert [schedule.phase_at(step).style for step in (0, 15, 16, 40)] == [
        "concise_casual_beginner", "concise_casual_beginner", "detailed_professional_expert",
        "detailed_professional_expert"]


def test_a_count_off_a_step_boundary_is_refused_with_the_nearest_ones():
    # The paper's 250 interactions are 15.625 steps of 16.
    with pytest.raises(InputError) as err:
        StyleSchedule.build("concise_casual_beginner:250,poetic:8,detailed_professional_expert", FOUR_BY_FOUR)
    message = str(err.value)
    assert "concise_casual_beginner:250 is 15.6 optimizer steps at 16 interactions a step (4 a process x 1 " \
           "accumulation x 4 processes); a switch falls on a step boundary, so use 240 (15 steps) or 256 (16 steps)" \
           in message
    assert "poetic:8 is 0.5 optimizer steps" in message and "so use 16 (1 steps)" in message  # both at once


def test_generation_batches_longer_than_a_step_and_reused_answers():
    # BS 2, GA 2, one process, steps_per_generation 4: 8 answers every two steps, 4 interactions a step; a switch
    # needs whole generation batches: 4 interactions (half a batch) is refused, 8 is two steps.
    long = BatchArithmetic(2, 2, 1, steps_per_generation=4)
    assert (long.generation_answers, long.interactions_per_step, long.unit) == (8, 4, 8)
    assert long.steps_for(8) == 2
    with pytest.raises(InputError, match="so use 8 \\(2 steps\\)"):
        StyleSchedule.build("poetic:4,no_emojis", long)
    # num_iterations 2: each batch of 4 answers trains two steps, 2 new interactions a step.
    reused = BatchArithmetic(2, 2, 1, steps_per_generation=2, num_iterations=2)
    assert (reused.generation_answers, reused.interactions_per_step, reused.unit) == (4, 2, 4)
    # GA 3 with a generation every 2 micro-batches: only every third batch starts a step (6 micro-batches = 2 steps).
    odd = BatchArithmetic(1, 3, 2, steps_per_generation=2)
    assert (odd.generation_answers, odd.unit, odd.steps_for(odd.unit)) == (4, 12, 2)
    assert odd.interactions_per_step == Fraction(6)


def test_three_personas_their_interactions_and_the_settings_a_checkpoint_records():
    schedule = StyleSchedule.build("poetic:32,no_emojis:16,humorous", FOUR_BY_FOUR)
    assert schedule.end_steps == (2, 3, None)
    assert [schedule.start_step(i) for i in range(3)] == [0, 2, 3]
    assert schedule.interactions_seen(0) == [0, 0, 0]
    assert schedule.interactions_seen(40) == [32, 8, 0]
    assert schedule.interactions_seen(100) == [32, 16, 52]
    settings = schedule.settings(step=3, answers=48)
    assert settings["active_style"] == "no_emojis"  # step 3's answers (0-based step 2) were no_emojis'
    assert settings["interactions_per_step"] == 16 and settings["spec"] == "poetic:32,no_emojis:16,humorous"
    assert [(p["style"], p["interactions"], p["start_step"], p["end_step"], p["interactions_seen"])
            for p in settings["phases"]] == [("poetic", 32, 0, 2, 32), ("no_emojis", 16, 2, 3, 16),
                                             ("humorous", None, 3, None, 0)]
    assert settings["phases"][2]["persona"] == STYLE_PERSONAS["humorous"]
    assert schedule.settings(step=0, answers=0)["active_style"] == "poetic"
    json.dumps(settings)  # goes into sdpo_run_settings.json as it is


def test_the_printout_and_its_warnings():
    schedule = StyleSchedule.build(FLIP, FOUR_BY_FOUR)
    assert schedule.describe(32) == [
        f"persona schedule: {FLIP}, 16 interactions a step (4 a process x 1 accumulation x 4 processes)",
        "  steps 1-16 (interactions 1-256): concise_casual_beginner",
        "  steps 17-32 (interactions 257-512): detailed_professional_expert, to the end of the run",
        "  switch after step 16: concise_casual_beginner -> detailed_professional_expert (checkpoint-16 is the last "
        "one trained on concise_casual_beginner alone)",
    ]
    assert schedule.describe()[2] == "  steps 17- (interactions 257-): detailed_professional_expert, to the end of the run"
    assert schedule.warnings(32, (4, 8, 12, 16, 20, 24, 28, 32)) == []
    assert schedule.warnings(32, (3, 6, 9, 12, 15, 18, 32)) == [
        "no checkpoint is saved at the switch after step 16 (checkpoints: 3 6 9 12 15 18 32); a save_steps that "
        "divides 16 marks it"]
    assert schedule.warnings(12, (12,)) == [
        "the run's 12 steps end before step 16, where detailed_professional_expert would start"]


# ------------------------------------------------------------------------------------------------ command line
def command(*args):
    return subprocess.run([sys.executable, "-m", "sdpo_interactions.users.style_schedule", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_the_command_prints_the_switch_points_from_the_recipe_and_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("per_device_train_batch_size: 8\ngradient_accumulation_steps: 1\nsave_steps: 5\n"
                      "num_train_epochs: 1\n")
    result = command("--style_schedule", FLIP, "--config", str(recipe), "--world_size", "4",
                     "--per_device_train_batch_size", "4", "--train_n", "512", "--learning_rate", "1e-6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:3] == ["  steps 1-16 (interactions 1-256): concise_casual_beginner",
                                               "  steps 17-32 (interactions 257-512): detailed_professional_expert, "
                                               "to the end of the run"]
    assert "warning: no checkpoint is saved at the switch after step 16" in result.stderr  # save_steps 5
    bad = command("--style_schedule", "concise_casual_beginner:250,detailed_professional_expert", "--world_size", "4",
                  "--per_device_train_batch_size", "4")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: --style_schedule") and "240 (15 steps) or 256 (16 steps)" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_command_and_the_flag_load_no_torch():
    probe = ("import sys; from sdpo_interactions.users.style_schedule import main; "
             "from sdpo_interactions.users.registry import UserArguments; "
             f"UserArguments(style_schedule={FLIP!r}); "
             "main(['--style_schedule', 'poetic:8,no_emojis', '--world_size', '1', '--per_device_train_batch_size', '8']); "
             "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------ the flag
def test_the_flag_starts_the_user_with_the_first_persona_and_refuses_a_contradicting_style():
    args = UserArguments(style_schedule=FLIP)
    assert (args.style, args.persona) == ("concise_casual_beginner", STYLE_PERSONAS["concise_casual_beginner"])
    args = UserArguments(style_schedule="poetic:8,no_emojis")
    assert args.style == "poetic"
    assert UserArguments(style="poetic", style_schedule="poetic:8,no_emojis").style == \
        "poetic"
    with pytest.raises(ValueError, match="--style no_emojis and --style_schedule \\(which starts with poetic\\) "
                                         "disagree; drop --style"):
        UserArguments(style="no_emojis", style_schedule="poetic:8,no_emojis")
    with pytest.raises(InputError, match="unknown style 'grumpy'"):
        UserArguments(style_schedule="grumpy:8,poetic")


# ------------------------------------------------------------------------------------------------ the switch
class RecordingPersona:
    """Only the persona setter: the callback's side of the interface."""

    def __init__(self, style, persona):
        self.style, self.persona, self.set = style, persona, []

    def set_persona(self, style, persona):
        self.set.append(style)
        self.style, self.persona = style, persona


def test_the_callback_switches_at_the_step_boundary_and_on_resume():
    from sdpo_interactions.core.persona_schedule import PersonaScheduleCallback

    schedule = StyleSchedule.build("poetic:32,no_emojis", FOUR_BY_FOUR)
    user = RecordingPersona("poetic", STYLE_PERSONAS["poetic"])
    callback = PersonaScheduleCallback(schedule, user)
    for step in range(4):
        callback.on_step_begin(None, SimpleNamespace(global_step=step), None)
        assert user.style == ("poetic" if step < 2 else "no_emojis")
    assert user.set == ["no_emojis"]  # switched once, at step 2's start
    resumed = RecordingPersona("poetic", STYLE_PERSONAS["poetic"])  # a fresh process starts with the first persona
    PersonaScheduleCallback(schedule, resumed).on_train_begin(None, SimpleNamespace(global_step=3), None)
    assert (resumed.style, resumed.persona) == ("no_emojis", STYLE_PERSONAS["no_emojis"])
    with pytest.raises(TypeError, match="needs a user with set_persona"):
        PersonaScheduleCallback(schedule, object())


def test_a_local_user_writes_its_prompt_from_the_persona_it_is_switched_to(tiny_model_dir, monkeypatch):
    from sdpo_interactions.users.base import StyleUserSimulator

    user = StyleUserSimulator(tiny_model_dir, "poetic", max_new_tokens=1, device="cpu")
    rendered = []
    template = user.tokenizer.apply_chat_template

    def spy(messages, **kwargs):
        rendered.append(messages[0]["content"])
        return template(messages, **kwargs)

    monkeypatch.setattr(user.tokenizer, "apply_chat_template", spy)
    user.generate_feedback(["Hi?"], ["Hello."])
    user.set_persona("no_emojis", STYLE_PERSONAS["no_emojis"])
    user.generate_feedback(["Hi?"], ["Hello."])
    assert STYLE_PERSONAS["poetic"] in rendered[0] and STYLE_PERSONAS["no_emojis"] in rendered[1]
    assert user.settings()["style"] == "no_emojis"
    with pytest.raises(ValueError, match="empty"):
        user.set_persona("mine", " ")


@pytest.mark.parametrize("backend", ["claude", "api"])
def test_api_users_send_the_persona_they_are_switched_to(backend, monkeypatch):
    from sdpo_interactions.testing.messages_server import MessagesServer
    from sdpo_interactions.users.registry import build_user_simulator

    with MessagesServer() as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        flags = {"user_api_base": server.url + "/v1", "user_api_model": "m"} if backend == "api" else {}
        user = build_user_simulator(UserArguments(style_schedule="poetic:8,no_emojis", user_api_max_retries=0,
                                                  **flags), {})
        user.generate_feedback(["ID:one Hi?"], ["Hello."])
        user.set_persona("no_emojis", STYLE_PERSONAS["no_emojis"])
        user.generate_feedback(["ID:two Hi?"], ["Hello."])
        systems = [r.body.get("system") or r.body["messages"][0]["content"] for r in server.requests]
    assert STYLE_PERSONAS["poetic"] in systems[0] and STYLE_PERSONAS["no_emojis"] in systems[1]
    assert STYLE_PERSONAS["poetic"] not in systems[1]
