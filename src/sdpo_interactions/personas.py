"""The simulated users' personas: one data file (personas.yaml), loaded and validated here and nowhere else.

A persona is plain text that both the user simulator and the evaluation's judge play, so a style name only means
something together with its text. Runs therefore store the text they trained with, and a `--persona_file` (YAML or
JSON, name -> description) can add personas or override built-in ones for training and evaluation alike.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import yaml

from sdpo_interactions.run_files import BadLinesError, InputError, MissingInputError

BUILTIN_PERSONA_FILE = Path(__file__).resolve().with_name("personas.yaml")
# The research code spells one persona "answer_direclty_reduce_formatting"; its runs and scripts use that name.
STYLE_ALIASES = {"answer_direclty_reduce_formatting": "answer_directly_reduce_formatting"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def load_persona_file(path: str | os.PathLike) -> dict[str, str]:
    """Read a name -> description mapping; a bad entry is reported with its file and line.

    YAML is read node by node (JSON is valid YAML), so every error can point at the line that caused it, and a
    name given twice is an error rather than silently the last one. Every bad entry is reported at once.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingInputError(f"persona file: no such file: {path}") from None
    except IsADirectoryError:
        raise InputError(f"persona file: {path} is a folder, not a file") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8; save the file as UTF-8") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InputError(f"{where}: not valid YAML or JSON ({getattr(err, 'problem', err)})") from None
    if root is None:
        raise InputError(f"{path}: empty persona file; expected a mapping of style name -> description")
    if not isinstance(root, yaml.MappingNode):
        raise InputError(f"{path}:{root.start_mark.line + 1}: expected a mapping of style name -> description")
    personas: dict[str, str] = {}
    problems = []
    for key, value in root.value:
        where = f"{path}:{key.start_mark.line + 1}"
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"{where}: a style name is letters, digits, '_', '.' or '-', got {name!r}")
        elif name in personas:
            problems.append(f"{where}: style {name!r} is defined twice")
        elif description_problem(value) is not None:
            problems.append(f"{where}: the description of {name!r} {description_problem(value)}")
        personas[name] = " ".join(value.value.split()) if isinstance(value, yaml.ScalarNode) else ""
    if problems:
        raise BadLinesError(path, problems)
    return personas


# YAML's name for what a plain (unquoted) value turned out to be, when a description must be text.
YAML_KINDS = {"tag:yaml.org,2002:int": "a number", "tag:yaml.org,2002:float": "a number",
              "tag:yaml.org,2002:bool": "true/false", "tag:yaml.org,2002:null": "nothing",
              "tag:yaml.org,2002:timestamp": "a date"}


def description_problem(value: yaml.Node) -> Optional[str]:
    """What is wrong with a persona description's YAML node, or None for non-empty text."""
    if isinstance(value, yaml.SequenceNode):
        return "must be text, got a list"
    if isinstance(value, yaml.MappingNode):
        return "must be text, got a mapping"
    if value.tag in YAML_KINDS and value.value.strip():
        return f"must be text, got {YAML_KINDS[value.tag]} ({value.value}); put it in quotes to keep it as text"
    if value.tag != "tag:yaml.org,2002:str" or not value.value.strip():
        return "must be non-empty text"
    return None


def persona_catalogue(persona_file: Optional[str | os.PathLike] = None) -> dict[str, str]:
    """The built-in personas, with a persona file's entries added or replacing built-in ones."""
    catalogue = load_persona_file(BUILTIN_PERSONA_FILE)
    if persona_file is not None:
        catalogue.update(load_persona_file(persona_file))
    return catalogue


def resolve_style(style: str, catalogue: dict[str, str]) -> str:
    """The catalogue's name for `style` (aliases resolved); an unknown style lists the known ones."""
    name = style if style in catalogue else STYLE_ALIASES.get(style, style)
    if name not in catalogue:
        raise InputError(f"Unknown style {style!r}. Known styles: {', '.join(sorted(catalogue))}")
    return name


def resolve_persona(style: str, persona_file: Optional[str | os.PathLike] = None) -> tuple[str, str]:
    """(the catalogue's name for `style`, its persona text): the built-in personas, a persona file's entries over them."""
    catalogue = STYLE_PERSONAS if persona_file is None else persona_catalogue(persona_file)
    name = resolve_style(style, catalogue)
    return name, catalogue[name]


STYLE_PERSONAS: dict[str, str] = persona_catalogue()
