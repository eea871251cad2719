"""What the command-line tools share: tyro parsing with one-line errors, flag names, devices.

``train_rl.py``, ``evaluate.py`` and ``python -m agents.plot`` read their flags
from a dataclass with `parse_args` (tyro: every field a ``--flag``, its
docstring the help). A user's mistake, whether tyro finds it (a bad type, an
unknown flag) or the tool does (a value out of range, a missing run), ends
the same way: one line ``error: ...`` on stderr naming the value and what is
allowed, and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import sys
from collections.abc import Sequence
from typing import Annotated, Any, NoReturn, TypeVar

import tyro

import envs
from agents.run_config import ConfigError
from envs.core import field_docstrings

T = TypeVar("T")

USAGE_ERROR = 2
"""Exit status of a user's mistake (argparse's convention)."""

_BORDERS = ("╭", "╰", "+")
"""How the top and bottom lines of tyro's error box begin (rich draws ASCII boxes where it
cannot tell the terminal's encoding)."""


def flag_name(name: str) -> str:
    """The command-line flag of a field: ``target_success`` -> ``--target-success``."""
    return "--" + name.replace("_", "-")


def one_line_tyro_error(text: str) -> str:
    """tyro's boxed error message as one line: the first section of the box, with the flag
    a mistyped option was probably meant to be."""
    # The box's top border holds its title ("Value error"): the sections below say it all.
    lines = [line.strip().strip("│|").strip() for line in text.splitlines()
             if not line.strip().startswith(_BORDERS)]  # fmt: skip
    sections: list[list[str]] = [[]]
    for line in lines:
        if line and set(line) <= set("─-"):
            sections.append([])
        elif line:
            sections[-1].append(line)
    sections = [section for section in sections if section]
    if len(sections) > 1 and len(sections[0]) == 1 and ":" not in sections[0][0]:
        sections = sections[1:]  # a title drawn as a line of its own (no box, e.g. no tty)
    if not sections:
        return "invalid command line"
    message = " ".join(sections[0])
    value = re.search(r"Error parsing (--[\w-]+): .*?'([^']*)'\]?\.?$", message)
    helptext = " ".join(" ".join(section) for section in sections[1:])
    if value:
        flag = value.group(1)
        metavar = re.search(re.escape(flag) + r" (\S+)", helptext)
        expected = f"; expected {metavar.group(1)}" if metavar else ""
        message = f"{flag}: invalid value {value.group(2)!r}{expected}"
    suggestion = re.search(r"Perhaps you meant: (--[\w-]+)", helptext)
    if suggestion:
        message += f" (did you mean {suggestion.group(1)}?)"
    missing = re.match(r"Missing from [^:]*: (\S+) (.*)", message)
    if missing:
        meaning = missing.group(2).replace("(required)", "").strip().rstrip(".")
        message = f"missing {missing.group(1)} ({meaning})"
    return re.sub(r"\s+", " ", message).strip()


def given_flags(argv: Sequence[str] | None) -> set[str]:
    """The field names of the ``--flags`` present in ``argv`` (``sys.argv`` when None),
    whatever their value: ``--seed 1`` is given even where 1 is the default."""
    tokens = sys.argv[1:] if argv is None else argv
    return {token[2:].split("=", 1)[0].replace("-", "_") for token in tokens
            if token.startswith("--") and len(token) > 2}  # fmt: skip


def parse_args(cls: type[T], argv: Sequence[str] | None, prog: str, description: str) -> T:
    """``cls`` filled from ``argv`` by tyro; a parsing error is one line on stderr and exit
    status 2 (``--help`` prints the full help as usual)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, args=argv, prog=prog, description=description)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        print(f"error: {one_line_tyro_error(captured.getvalue())}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the tools' one-line errors (``error: ...``, exit status 2), for the
    scripts whose command line is subcommands and lists rather than one dataclass."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def resolve_device(device: str) -> str:
    """``auto`` becomes cuda when available; asking for cuda without one is a ConfigError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return device


def task_parameters() -> dict[str, tuple[str, ...]]:
    """Each suite task's parameter names (its config dataclass's fields), in declaration
    order."""
    return {name: task[0].config_class.parameters() for name, task in envs.TASKS.items()}


def _task_flag_help(name: str) -> str:
    """The help of the flag for task parameter ``name``: its docstring in each task that has
    it, with the task's default."""
    entries = []
    for task, row in envs.TASKS.items():
        config_class = row[0].config_class
        if name in config_class.parameters():
            default = next(f.default for f in dataclasses.fields(config_class) if f.name == name)
            entries.append((task, field_docstrings(config_class)[name], default))
    if len(entries) > 1 and len({doc for _, doc, _ in entries}) == 1:
        defaults = ", ".join(f"{task} {default}" for task, _, default in entries
                             if default is not None)  # fmt: skip
        return entries[0][1] + (f" Task defaults: {defaults}." if defaults else "")
    parts = []
    for task, doc, default in entries:
        shown = f" Task default {default}." if default is not None else ""
        parts.append(f"{task.capitalize()}: {doc[0].lower()}{doc[1:]}{shown}")
    return " ".join(parts)


def task_flags(hint: str) -> type:
    """A dataclass with one ``int | None`` field (default None) per task parameter of the
    suite's tasks, its help from the tasks' config dataclasses; ``hint`` says in --help
    what an unset flag means. The training and evaluation flags both derive from it."""
    names = dict.fromkeys(name for names in task_parameters().values() for name in names)
    fields: list[tuple[str, Any, Any]] = []
    for name in names:
        marker = tyro.conf.arg(metavar="INT", help=_task_flag_help(name),
                               help_behavior_hint=hint)  # fmt: skip
        fields.append((name, Annotated[int | None, marker], dataclasses.field(default=None)))
    return dataclasses.make_dataclass("TaskFlags", fields)
