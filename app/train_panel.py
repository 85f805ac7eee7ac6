"""The Train page's parts: the form that starts a run and the live view of a training process."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import torch

from app.charts import show_training_curves
from app.state import load_config, load_metrics, load_skipped, runs_root, select_run
from app.widgets import run_page
from core.background import (
    progress_fraction,
    read_output_tail,
    resume_command,
    start_training,
    stop_training,
    training_command,
    training_status,
)
from core.config import DEVICES, MAX_COLOR_STRENGTH
from core.run_files import RunFiles
from data.scan import scan_folder
from models.names import BACKBONES

REFRESH_SECONDS = 2.0
# Epoch limit when the user stops by time budget, so the budget is what ends training.
EPOCHS_UNDER_BUDGET = 100_000
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_STATE_TEXT = {
    "running": "Training is running.",
    "finished": "Training finished and the images are labelled.",
    "stopped": "Training was stopped. Resume continues from the last checkpoint.",
    "failed": "Training failed. The output below says why.",
    "not started": "Training has not started.",
}


def parse_class_counts(text: str) -> tuple[int, ...]:
    """Parse ``10 20 40`` or ``10, 20`` into class counts.

    Raises:
        ValueError: if an entry is not a whole number.
    """
    parts = [part for part in re.split(r"[\s,;]+", text.strip()) if part]
    if not parts:
        raise ValueError("type at least one class count, for example 10 20 40")
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"class counts {text!r} must be whole numbers separated by spaces") from None


def new_run_dir(folder: Path, name: str) -> Path:
    """Return the run directory for a new run named ``name`` (default: folder name and time).

    Raises:
        ValueError: if the name has characters other than letters, digits, '.', '_' and '-', or is taken.
    """
    name = name.strip() or f"{folder.name or 'run'}-{datetime.now():%Y%m%d-%H%M%S}"
    if not _RUN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r} may only use letters, digits, '.', '_' and '-' (at most 100)")
    run_dir = runs_root() / name
    if RunFiles(run_dir).config.exists() or RunFiles(run_dir).train_pid.exists():
        raise ValueError(f"a run named {name!r} already exists; open it to resume, or pick another name")
    return run_dir


def check_folder(text: str) -> Path:
    """Return the image folder typed by the user, or raise ValueError saying what is wrong with it."""
    if not text.strip():
        raise ValueError("type the path of the image folder to label")
    folder = Path(text.strip()).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder or does not exist; type the path of a folder of images")
    with st.spinner(f"Looking for images in {folder}..."):
        count = len(scan_folder(folder))
    if count == 0:
        raise ValueError(f"no image files were found in {folder} or its sub-folders")
    return folder


def new_run_form() -> None:
    """Show the settings of a new run and start it in the background on submit."""
    with st.form("new_run"):
        folder_text = st.text_input("Image folder", key="new_folder",
                                    help="Folder of images to label; sub-folders are searched too.")
        name = st.text_input("Run name", key="new_name",
                             help=f"Folder created in {runs_root()}. Default: folder name and time.")
        classes_text = st.text_input("Class counts", "10 20 40", key="new_classes",
                                     help="One classifier head per number. The first is the primary head.")
        stop_by = st.radio("Stop training after", ("a time budget", "a number of epochs"), horizontal=True,
                           key="new_stop_by")
        left, right = st.columns(2)
        minutes = left.number_input("Time budget (minutes)", min_value=0.5, value=10.0, step=0.5, key="new_minutes")
        epochs = right.number_input("Epochs", min_value=1, value=100, step=1, key="new_epochs")
        backbone = left.selectbox("Backbone", ("auto", *BACKBONES), key="new_backbone",
                                  help="auto: resnet10t on a CPU, resnet18 on a GPU.")
        device = right.selectbox("Device", DEVICES, key="new_device", help="auto: the GPU when PyTorch finds one.")
        color_strength = left.number_input(
            "Colour augmentation strength", min_value=0.0, max_value=MAX_COLOR_STRENGTH, value=1.0, step=0.25,
            key="new_color_strength",
            help="1: DINO's colour jitter, for photos. 0: no colour changes, when colour tells the classes apart "
                 "(flowers, signs, stains).",
        )
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return

    settings: dict[str, Any] = {"backbone": backbone, "device": device, "color_strength": float(color_strength)}
    if stop_by == "a time budget":
        settings.update(time_budget=float(minutes) * 60, epochs=EPOCHS_UNDER_BUDGET)
    else:
        settings["epochs"] = int(epochs)
    try:
        settings["class_counts"] = parse_class_counts(classes_text)
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("PyTorch finds no CUDA device on this machine; choose auto or cpu")
        folder = check_folder(folder_text)
        run_dir = new_run_dir(folder, name)
        start_training(run_dir, training_command(folder, run_dir, settings))
        select_run(run_dir)
    except ValueError as error:
        st.error(str(error))
        return
    st.rerun()


def training_panel(run_dir: Path) -> None:
    """Show the live progress of the run's training, refreshed while it runs, with stop and resume."""
    running = training_status(run_dir).running
    st.fragment(run_every=REFRESH_SECONDS if running else None)(_guarded_live_view)(run_dir, running)


def _guarded_live_view(run_dir: Path, was_running: bool) -> None:
    # A timed fragment rerun runs outside the page's main function, so it needs its own error boundary.
    run_page(lambda: _live_view(run_dir, was_running))


def _live_view(run_dir: Path, was_running: bool) -> None:
    status = training_status(run_dir)
    if was_running and not status.running:
        st.rerun()

    text = _STATE_TEXT[status.state]
    if status.exit_code not in (None, 0):
        text += f" (exit status {status.exit_code})"
    (st.error if status.state == "failed" else st.info)(text)
    _show_progress(run_dir)
    _show_buttons(run_dir, status.state)

    show_training_curves(load_metrics(run_dir))
    _show_skipped(run_dir)
    output = read_output_tail(run_dir)
    if output:
        with st.expander("Training output", expanded=status.state == "failed"):
            st.code(output, language=None)


def _show_progress(run_dir: Path) -> None:
    records = load_metrics(run_dir)
    if not RunFiles(run_dir).config.exists():
        st.progress(0.0, text="Scanning and decoding the images...")
        return
    config = load_config(run_dir)
    fraction = progress_fraction(config.epochs, config.time_budget, records)
    if records:
        last = records[-1]
        limit = f"of {config.epochs}" if config.epochs < EPOCHS_UNDER_BUDGET else ""
        text = (f"Epoch {last['epoch']} {limit} · loss {last['loss']:.3f} · "
                f"{last['classes_in_use']} classes in use · {last['elapsed_seconds']:.0f} s of training")
    else:
        text = "Waiting for the first epoch to finish..."
    st.progress(fraction, text=text)


def _show_buttons(run_dir: Path, state: str) -> None:
    if state == "running":
        if st.button("Stop training", key="train_stop",
                     help="Sends SIGINT. The run keeps the checkpoint of its last finished epoch."):
            stop_training(run_dir)
            st.toast("Stop requested; training exits at the next step.")
        return
    resumable = RunFiles(run_dir).checkpoint.exists() or RunFiles(run_dir).train_pid.exists()
    if state in ("stopped", "failed") and resumable and st.button("Resume training", key="train_resume"):
        try:
            start_training(run_dir, resume_command(run_dir))
        except ValueError as error:
            st.error(str(error))
            return
        st.rerun()


def _show_skipped(run_dir: Path) -> None:
    skipped = load_skipped(run_dir)
    if not skipped:
        return
    with st.expander(f"{len(skipped)} file(s) were skipped", expanded=False):
        st.caption("These files could not be read as images and were left out.")
        st.dataframe(pd.DataFrame(skipped), hide_index=True, width="stretch")

