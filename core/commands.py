"""Commands that messages suggest, written so that they run when pasted into a shell.

A user who ran ``.venv/bin/python -m core label ...`` without activating the
environment cannot run a suggested ``python -m core assign ...``, so the
suggestions name this environment's own programs, relative to the current
folder where they lie inside it, and quote paths with spaces or commas.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

APP_PAGE = Path(__file__).resolve().parents[1] / "app" / "Home.py"


def _shown_path(path: Path) -> str:
    """Return ``path`` relative to the current folder where it lies inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def program_command(name: str) -> str:
    """Return how to start ``name`` (``python`` or ``streamlit``) of the running environment,
    such as ``.venv/bin/streamlit``, or the bare name where the environment has no such program."""
    executable = Path(sys.executable)
    program = executable if name == "python" else executable.with_name(name)
    if not program.exists():
        return name
    return shlex.quote(_shown_path(program))


def core_command(*arguments: object) -> str:
    """Return ``python -m core`` with ``arguments``, each quoted for a POSIX shell."""
    quoted = " ".join(shlex.quote(str(argument)) for argument in arguments)
    return f"{program_command('python')} -m core {quoted}"


def app_command() -> str:
    """Return the command that starts the Streamlit app."""
    return f"{program_command('streamlit')} run {shlex.quote(_shown_path(APP_PAGE))}"
