"""What the command-line tools share: tyro parsing with one-line errors, flag names, devices.

``train_rl.py``, ``evaluate.py`` and ``python -m agents.plot`` read their flags
from a dataclass with `parse_args` (tyro: every field a ``--flag``, its
docstring the help). A user's mistake, whether tyro finds it (a bad type, an
unknown flag) or the tool does (a value out of range, a missing run), ends
the same way: one line ``error: ...`` on stderr naming the value and what is
allowed, and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Sequence
from typing import TypeVar

import tyro

from agents.run_config import ConfigError

T = TypeVar("T")

USAGE_ERROR = 2
"""Exit status of a user's mistake (argparse's convention)."""

_BOX = "╭╮╰╯│─"


def flag_name(name: str) -> str:
    """The command-line flag of a field: ``target_success`` -> ``--target-success``."""
    return "--" + name.replace("_", "-")


def one_line_tyro_error(text: str) -> str:
    """tyro's boxed error message as one line: the first section of the box, with the flag
    a mistyped option was probably meant to be."""
    lines = [line.strip().strip(_BOX).strip() for line in text.splitlines()]
    sections: list[list[str]] = [[]]
    for line in lines:
        if line and set(line) <= set(_BOX + " "):
            sections.append([])
        elif line:
            sections[-1].append(line)
    sections = [section for section in sections if section]
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
    message = message.replace("Missing from", "missing argument of").replace("(required)", "")
    return re.sub(r"\s+", " ", message).strip()


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


def resolve_device(device: str) -> str:
    """``auto`` becomes cuda when available; asking for cuda without one is a ConfigError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return device
