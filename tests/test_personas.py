"""Personas are data: the built-in file, a user's persona file, and every bad file named by file and line."""

import json
import re

import pytest

import sdpo_interactions.personas as personas
from sdpo_interactions.run_files import BadLinesError, InputError
from sdpo_interactions.personas import STYLE_ALIASES, STYLE_PERSONAS, load_persona_file, persona_catalogue, resolve_style

# Every persona name of the authors' research code (auxiliary/user_simulator.py).
RESEARCH_STYLES = [
    f"{length}_{tone}_{level}" for length in ("concise", "detailed") for tone in ("casual", "professional")
    for level in ("beginner", "expert")
] + [
    "poetic", "no_punctuation", "no_emojis", "less_filler_praise_sycophancy", "answer_directly_reduce_formatting",
    "no_first_person", "clarification_first", "single_answer", "writing_tics", "writing_tics_v2", "formatting",
    "no_sycophantic", "sycophantic_and_praise", "answer_first", "no_filler_followup", "high_initiative",
    "committing", "no_lists", "more_lists", "more_formatting", "less_formatting", "opinionated", "exclamation",
]
OUR_STYLES = ["use_emojis", "more_structure_formatting", "humorous", "socratic", "skeptical_evidence_seeking",
              "child_friendly"]


def test_every_research_persona_and_ours_is_built_in():
    assert len(RESEARCH_STYLES) == 31
    assert set(RESEARCH_STYLES) | set(OUR_STYLES) == set(STYLE_PERSONAS)
    assert len(set(STYLE_PERSONAS.values())) == len(STYLE_PERSONAS)  # no two styles share a text


@pytest.mark.parametrize(
    "style, words",
    [
        # Same intent as the research code, where a shared name used to mean something else here.
        ("concise_casual_expert", ["extremely short", "slang"]),
        ("concise_professional_expert", ["semicolons", "em-dashes"]),
        ("detailed_professional_beginner", ["simple", "technical vocabulary"]),
        ("committing", ["generally", "usually"]),
        ("no_sycophantic", ["disagree"]),
    ],
)
def test_personas_keep_the_research_intent(style, words):
    assert all(word in STYLE_PERSONAS[style] for word in words)


def test_the_misspelt_research_name_is_accepted():
    assert STYLE_ALIASES == {"answer_direclty_reduce_formatting": "answer_directly_reduce_formatting"}
    assert resolve_style("answer_direclty_reduce_formatting", STYLE_PERSONAS) == "answer_directly_reduce_formatting"


def test_unknown_style_lists_the_choices():
    with pytest.raises(ValueError) as err:
        resolve_style("concise_casual_begginer", STYLE_PERSONAS)
    assert "Known styles" in str(err.value) and all(style in str(err.value) for style in STYLE_PERSONAS)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_persona_file_adds_and_overrides(tmp_path, suffix):
    entries = {"pirate": "You want every answer in pirate speak.", "poetic": "You want haiku, nothing else."}
    path = tmp_path / f"mine.{suffix}"
    path.write_text(json.dumps(entries) if suffix == "json" else "".join(f"{k}: {v}\n" for k, v in entries.items()))
    catalogue = persona_catalogue(path)
    assert catalogue["pirate"] == entries["pirate"] and catalogue["poetic"] == entries["poetic"]
    assert catalogue["no_emojis"] == STYLE_PERSONAS["no_emojis"]
    assert STYLE_PERSONAS["poetic"] != entries["poetic"]  # the built-in table itself is untouched


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("pirate: Arr.\npoetic: [a, list]\n", 2, "must be text, got a list"),
        ("poetic: Haiku.\npirate: 12\n", 2, r"of 'pirate' must be text, got a number \(12\); put it in quotes"),
        ("pirate: yes\n", 1, "must be text, got true/false"),
        ("pirate: Arr.\n\nempty:\n", 3, "must be non-empty text"),
        ("pirate: Arr.\npirate: Again.\n", 2, "defined twice"),
        ("pirate: Arr.\n'bad name!': x\n", 2, "a style name is"),
        ("pirate: Arr.\n  bad: indent: here\n", 2, "not valid YAML or JSON"),
        ('{"pirate": "Arr.",\n "poetic": 3}\n', 2, "must be text, got a number"),
        ("- a list\n- not a mapping\n", 1, "expected a mapping"),
    ],
)
def test_a_bad_persona_file_names_its_line(tmp_path, text, line, message):
    path = tmp_path / "personas.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_persona_file(path)
    assert str(err.value).startswith(f"{path}:{line}:")


def test_every_bad_entry_is_reported_at_once(tmp_path):
    path = tmp_path / "personas.yaml"
    path.write_text("pirate: 12\nfine: Plain text.\nempty:\npirate: again\n")
    with pytest.raises(BadLinesError) as err:
        load_persona_file(path)
    assert [p.split(": ", 1)[0] for p in err.value.problems] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert "got a number" in err.value.problems[0] and "defined twice" in err.value.problems[2]


def test_a_persona_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "personas.yaml"
    path.write_bytes("pirate: Arr.\npoetic: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}:2: not valid UTF-8"):
        load_persona_file(path)


def test_the_built_in_file_is_the_one_source(tmp_path):
    assert personas.BUILTIN_PERSONA_FILE.name == "personas.yaml"
    assert load_persona_file(personas.BUILTIN_PERSONA_FILE) == STYLE_PERSONAS
    with pytest.raises(FileNotFoundError, match="no such file"):
        persona_catalogue(tmp_path / "missing.yaml")
