"""Start, watch and stop a training process that runs in the background.

The app starts ``python -m core label FOLDER --out RUN ...`` in a new session,
so its page never waits on training and a closed browser tab does not stop
it. The process id and command go to ``RUN/train.pid`` and the process's
output to ``RUN/train_output.log``. Stopping sends SIGINT, on which the CLI
exits and keeps the last checkpoint. Resuming runs the same command again,
which continues from ``RUN/checkpoint.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.cli import option_of_field
from core.config import TrainConfig
from core.run_files import RunFiles

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# CLI exit statuses: 130 after SIGINT, and negative numbers when a signal ended the process.
STOPPED_EXIT_CODES = (130, -signal.SIGINT, -signal.SIGTERM)

# Popen objects of the processes started by this Python process, by pid, so
# their exit status can be collected and they do not linger as zombies.
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class TrainingStatus:
    """State of a run's background training.

    Attributes:
        state: "running", "finished", "stopped", "failed" or "not started".
        pid: process id of the last process started for the run, or None.
        exit_code: the process's exit status, when known.
        command: the command line of the last process started for the run.
    """

    state: str
    pid: int | None = None
    exit_code: int | None = None
    command: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.state == "running"


def training_command(folder: Path, run_dir: Path, settings: dict[str, Any]) -> list[str]:
    """Return the ``python -m core label`` command for ``settings``, which are TrainConfig fields.

    Settings that are None are left to the CLI's defaults.

    Raises:
        ValueError: if the settings do not make a valid TrainConfig; the message names the setting.
    """
    chosen = {name: value for name, value in settings.items() if value is not None}
    TrainConfig(image_folder=str(folder), **chosen)

    command = [sys.executable, "-m", "core", "label", str(Path(folder).resolve()),
               "--out", str(Path(run_dir).resolve())]
    for name, value in chosen.items():
        option = option_of_field(name)
        if option is None:
            raise ValueError(f"the setting {name} has no command-line option, so a background run cannot set it")
        if isinstance(value, bool):
            command += [option] if value else []
        elif isinstance(value, (tuple, list)):
            command += [option, *(str(item) for item in value)]
        else:
            command += [option, str(value)]
    return command


def start_training(run_dir: Path, command: list[str]) -> TrainingStatus:
    """Start ``command`` in a new session with its output in ``RUN/train_output.log``.

    Raises:
        ValueError: if training of this run is already running.
    """
    files = RunFiles(Path(run_dir))
    current = training_status(run_dir)
    if current.running:
        raise ValueError(f"{run_dir} is already training (process {current.pid}); stop it before starting again")

    files.root.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(files.train_output, "a", encoding="utf-8") as output:
        output.write(f"\n=== {_now()} started: {shlex.join(command)}\n")
        output.flush()
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            env=environment, start_new_session=True,
        )
    _children[process.pid] = process
    _write_pid_file(files.train_pid, {"pid": process.pid, "command": command, "started": _now()})
    logger.info("Started training of %s as process %d", run_dir, process.pid)
    return TrainingStatus("running", process.pid, None, tuple(command))


def resume_command(run_dir: Path) -> list[str]:
    """Return the command that continues the run: the last one started, else one built from config.json.

    The stored command's ``--out`` becomes ``run_dir``, so a run folder that was
    moved or renamed resumes where it is now.

    Raises:
        ValueError: if the run has neither a stored command nor config.json.
    """
    files = RunFiles(Path(run_dir))
    stored = _read_pid_file(files.train_pid).get("command")
    if isinstance(stored, list) and "--out" in stored[:-1] and all(isinstance(part, str) for part in stored):
        command = [sys.executable, *stored[1:]]
        command[command.index("--out") + 1] = str(Path(run_dir).resolve())
        return command
    if not files.config.exists():
        raise ValueError(f"{run_dir} has no config.json and no stored command, so there is nothing to resume")
    config = TrainConfig.load(files.config)
    return training_command(Path(config.image_folder), Path(run_dir), {})


def training_status(run_dir: Path) -> TrainingStatus:
    """Return whether the run's background training is running, and how the last one ended."""
    files = RunFiles(Path(run_dir))
    info = _read_pid_file(files.train_pid)
    pid = info.get("pid")
    command = tuple(info.get("command") or ())
    if not isinstance(pid, int):
        return TrainingStatus(_state_from_files(files, None))

    exit_code = info.get("exit_code")
    if exit_code is None:
        alive, exit_code = _poll(pid, files)
        if alive:
            return TrainingStatus("running", pid, None, command)
        if exit_code is not None:
            _write_pid_file(files.train_pid, {**info, "exit_code": exit_code})

    if exit_code is None:
        return TrainingStatus(_state_from_files(files, info.get("started")), pid, None, command)
    if exit_code == 0:
        state = "finished"
    elif exit_code in STOPPED_EXIT_CODES:
        state = "stopped"
    else:
        state = "failed"
    return TrainingStatus(state, pid, exit_code, command)


def stop_training(run_dir: Path) -> bool:
    """Send SIGINT to the run's training process; return False when none is running.

    A process that ignores SIGINT (one started from a shell that ignores it, for
    example) gets SIGTERM instead, which also keeps the last saved checkpoint.
    """
    status = training_status(run_dir)
    if not status.running or status.pid is None:
        return False
    chosen = signal.SIGTERM if _ignores_sigint(status.pid) else signal.SIGINT
    if chosen == signal.SIGTERM:
        logger.warning("Process %d ignores SIGINT; sending SIGTERM instead", status.pid)
    try:
        os.kill(status.pid, chosen)
    except ProcessLookupError:
        return False
    logger.info("Sent %s to training process %d of %s", chosen.name, status.pid, run_dir)
    return True


def progress_fraction(epochs: int, time_budget: float, records: list[dict[str, Any]]) -> float:
    """Return the fraction of training done, in [0, 1], from metrics.jsonl records.

    As in training, the fraction is by epochs or by the time budget, whichever is further.
    """
    if not records:
        return 0.0
    last = records[-1]
    done = float(last.get("epoch", 0)) / max(1, epochs)
    if time_budget > 0:
        done = max(done, float(last.get("elapsed_seconds", 0.0)) / time_budget)
    return min(1.0, max(0.0, done))


def read_output_tail(run_dir: Path, max_lines: int = 30) -> str:
    """Return the last lines of the training output, with tqdm's carriage-return redraws removed."""
    path = RunFiles(Path(run_dir)).train_output
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - 64_000))
            text = stream.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(line for line in lines[-max_lines:] if line.strip())


# ----------------------------------------------------------------- helpers


def _poll(pid: int, files: RunFiles) -> tuple[bool, int | None]:
    """Return (alive, exit status or None when unknown) of a training process."""
    child = _children.get(pid)
    if child is not None:
        code = child.poll()
        if code is None:
            return True, None
        del _children[pid]
        return False, code
    return _is_training_process(pid, files.root), None


def _is_training_process(pid: int, run_dir: Path) -> bool:
    """Return whether ``pid`` is alive, not a zombie and, where /proc exists, runs on ``run_dir``.

    The command-line check keeps a recycled process id from counting as training.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc") / str(pid)
    if not proc.exists():
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        arguments = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    resolved = str(Path(run_dir).resolve()).encode()
    return state not in ("Z", "X") and b"core" in arguments and resolved in arguments


def _ignores_sigint(pid: int) -> bool:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError):
        pass
    return False


def _state_from_files(files: RunFiles, started: str | None) -> str:
    """Guess how a run ended when its exit status is unknown, from the files it wrote."""
    started_at = _parse_time(started)
    if files.labels.exists() and (started_at is None or files.labels.stat().st_mtime >= started_at):
        return "finished"
    if files.checkpoint.exists():
        return "stopped"
    return "failed" if started_at is not None else "not started"


def _read_pid_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_pid_file(path: Path, info: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
