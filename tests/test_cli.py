import dataclasses
import fcntl
import os
import re
import runpy
import sys
from pathlib import Path

import pytest

from core import jobs
from core.cli import FIELDS_WITHOUT_OPTION, build_parser, main, option_of_field
from core.commands import APP_PAGE, app_command, core_command, program_command
from core.config import TrainConfig
from core.run_lock import RunBusyError, run_lock


def test_second_lock_is_rejected_with_holder_pid(tmp_path):
    with run_lock(tmp_path):
        with open(tmp_path / ".lock", encoding="utf-8") as handle:
            assert handle.read() == str(os.getpid())
        # flock locks belong to the open file, so a second open in this process conflicts like another process.
        with pytest.raises(RunBusyError, match=f"another process \\(pid {os.getpid()}\\) is already working on"):
            with run_lock(tmp_path):
                pass


def test_lock_is_released_after_block(tmp_path):
    with run_lock(tmp_path):
        pass
    with run_lock(tmp_path):
        pass


def test_train_on_busy_run_stops(demo_folder, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "w", encoding="utf-8") as handle:
        handle.write("12345")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)

        code = main(["train", str(demo_folder), "--out", str(run), "--epochs", "1", "--workers", "0"])

    assert code == 2
    assert "another process (pid 12345) is already working on" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("options", [["--row-tau", "0"], ["--color-strength", "5"], ["--batch-size", "1"]])
def test_invalid_setting_leaves_no_run_folder(demo_folder, tmp_path, options):
    run = tmp_path / "run"
    assert main(["label", str(demo_folder), "--out", str(run), *options]) == 2
    assert not run.exists()


def test_unusable_folder_or_out_leaves_no_run_folder(demo_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["label", str(tmp_path / "missing"), "--out", str(run)]) == 2
    assert "does not exist. Check the path." in capsys.readouterr().err
    image = next((demo_folder / "airplane").iterdir())
    assert main(["train", str(image), "--out", str(run)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not run.exists()

    text_file = tmp_path / "notes.txt"
    text_file.write_text("keep me", encoding="utf-8")
    assert main(["label", str(demo_folder), "--out", str(text_file)]) == 2
    assert f"--out {text_file} is a file, not a folder. Give the path" in capsys.readouterr().err
    assert main(["label", str(demo_folder), "--out", str(text_file / "run")]) == 2
    assert f"--out {text_file / 'run'} is inside {text_file}, which is a file, not a folder." in capsys.readouterr().err
    assert text_file.read_text(encoding="utf-8") == "keep me"


def test_missing_run_leaves_no_folder(tmp_path, capsys):
    run = tmp_path / "missing"
    assert main(["evaluate", str(run)]) == 2
    assert main(["assign", str(run)]) == 2
    assert f"run directory {run} not found" in capsys.readouterr().err
    assert not run.exists()


def test_every_setting_has_its_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["label", "--help"])
    help_text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        option = option_of_field(field.name)
        if field.name not in FIELDS_WITHOUT_OPTION:
            assert re.search(f"{option}[ ,\\n]", help_text), f"{field.name}: {option} is not an option of label"


def test_invalid_setting_names_its_option(demo_folder, tmp_path, capsys):
    assert main(["label", str(demo_folder), "--out", str(tmp_path / "run"), "--nn-queue", "-3"]) == 2
    assert "invalid --nn-queue: queue size must be >= 0, got -3" in capsys.readouterr().err


def test_next_step_commands_use_this_environment(tmp_path, monkeypatch):
    python = tmp_path / "env" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.chdir(tmp_path)

    assert program_command("python") == str(Path("env/bin/python"))
    assert program_command("streamlit") == "streamlit"
    expected = f"{Path('env/bin/python')} -m core evaluate 'runs/my run, 2'"
    assert core_command("evaluate", Path("runs/my run, 2")) == expected

    (python.parent / "streamlit").touch()
    assert program_command("streamlit") == str(Path("env/bin/streamlit"))
    assert app_command() == f"{Path('env/bin/streamlit')} run {APP_PAGE}"

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert program_command("python") == str(python)


def test_app_command_is_relative_inside_the_project(monkeypatch):
    monkeypatch.chdir(APP_PAGE.parents[1])
    assert app_command().endswith(f" run {Path('app/Home.py')}")


def test_abbreviated_option_is_rejected(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["label", "images", "--out", "run", "--epoch", "3"])

    assert stop.value.code == 2
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err


def test_interrupted_assign_gives_its_own_advice(tmp_path, monkeypatch, capsys):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "assign", interrupt)

    assert main(["assign", str(tmp_path)]) == 130
    errors = capsys.readouterr().err
    assert "Interrupted. Files are replaced only once complete" in errors
    assert "checkpoint" not in errors


class _InterruptingFinder:
    """Import hook that raises KeyboardInterrupt for core.cli, as a Ctrl-C during start-up would."""

    def find_spec(self, name, path=None, target=None):
        if name == "core.cli":
            raise KeyboardInterrupt
        return None


def test_interrupt_while_starting_exits_quietly(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "core.cli")
    monkeypatch.setattr(sys, "meta_path", [_InterruptingFinder(), *sys.meta_path])

    with pytest.raises(SystemExit) as stop:
        runpy.run_module("core", run_name="__main__")

    assert stop.value.code == 130
    assert capsys.readouterr().err == "Interrupted while starting; nothing was done.\n"
