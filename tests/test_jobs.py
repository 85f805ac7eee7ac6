import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.config import TrainConfig
from core.jobs import prepare_images
from core.labels_csv import read_labels_csv
from core.metrics_log import read_metrics
from core.run_files import RunFiles
from core.train import Trainer, TrainingState, finished_message

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "16", "--classes", "4", "8", "--image-size", "32", "--workers", "0",
        "--hidden-dim", "64"]


def _plant_bad_files(folder: Path) -> dict[str, str]:
    """Add files that cannot be decoded; return path -> expected words of the reason."""
    real = next((folder / "airplane").iterdir()).read_bytes()
    (folder / "airplane" / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image", encoding="utf-8")
    # A readable image whose name is Latin-1, not UTF-8, a link to a deleted file and a link to itself
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(real)
    (folder / "dangling.png").symlink_to(folder / "deleted.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    return {"airplane/truncated.jpg": "truncated", "empty.png": "empty", "notes.jpg": "not an image",
            "caf\\xe9.jpg": "not valid utf-8", "dangling.png": "broken symbolic link",
            "loop.jpg": "too many levels of symbolic links"}


def test_label_writes_complete_run(demo_folder, tmp_path):
    bad = _plant_bad_files(demo_folder)
    run = tmp_path / "run"

    assert main(["label", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0

    files = RunFiles(run)
    table = read_labels_csv(files.labels)
    assert len(table.paths) == 40
    assert table.paths == sorted(table.paths)
    assert not set(bad) & set(table.paths)
    assert table.head_names == ["k4", "k8"]
    assert table.classes.min() >= 0
    assert (table.classes < np.array([4, 8])).all()
    assert ((table.confidences >= 0) & (table.confidences <= 1)).all()
    with open(files.labels, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["path", "class", "confidence", "class_k4", "confidence_k4", "class_k8", "confidence_k8"]

    embeddings = np.load(files.embeddings)
    assert embeddings.shape == (40, 128)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)

    with open(files.skipped, encoding="utf-8", newline="") as handle:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(skipped) == set(bad)
    for path, words in bad.items():
        assert words in skipped[path].lower()

    assert len(read_metrics(files.metrics)) == 1
    saved = json.loads(files.config.read_text())
    assert saved["class_counts"] == [4, 8]
    assert saved["image_folder"] == str(demo_folder)
    log = files.log.read_text(encoding="utf-8")
    assert log.count("Wrote 40 labels") == 1
    assert "Skipping caf\\xe9.jpg: the file name is not valid UTF-8" in log


def test_label_reports_too_few_images(tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    code = main(["label", str(folder), "--out", str(tmp_path / "run"), *FAST])
    assert code == 2
    assert "found 0 usable images" in capsys.readouterr().err


def test_label_reports_empty_folder_and_creates_no_run(tmp_path, capsys):
    folder = tmp_path / "empty"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "readme.txt").write_text("no images here")
    assert main(["label", str(folder), "--out", str(tmp_path / "run")]) == 2
    assert "no image files found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_one_usable_image_is_reported_in_the_singular(tmp_path, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("RGB", (16, 16), "red").save(folder / "only.png")
    assert main(["label", str(folder), "--out", str(tmp_path / "run"), *FAST]) == 2
    assert "found 1 usable image in" in capsys.readouterr().err


def test_run_inside_image_folder_is_not_scanned(demo_folder):
    run = demo_folder / "runs" / "first"
    assert main(["label", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0
    thumbnail = RunFiles(run).thumbnails_dir / "ab" / "thumb.jpg"
    thumbnail.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(thumbnail)

    assert main(["assign", str(run), "--workers", "0"]) == 0
    assert len(read_labels_csv(RunFiles(run).labels).paths) == 40


def test_recommendation_reason_is_logged_once(demo_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["label", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0

    log = capsys.readouterr().err
    reason = json.loads(RunFiles(run).diagnostics.read_text(encoding="utf-8"))["recommendation_reason"]
    assert log.count(reason) == 1
    assert log.count("Recommended head:") == 1


def test_batch_larger_than_folder_is_rejected(demo_folder, tmp_path, capsys):
    code = main(["train", str(demo_folder), "--out", str(tmp_path / "run"), "--batch-size", "64", "--workers", "0"])
    assert code == 2
    errors = capsys.readouterr().err
    assert "found 40 usable images" in errors
    assert "--batch-size 40" in errors


def test_resume_with_other_settings_is_rejected(demo_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0
    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "1", "--seed", "5", *FAST]) == 2
    assert "seed=5" in capsys.readouterr().err


def test_resume_accepts_automatic_values(demo_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0
    automatic = ["--backbone", "auto", "--batch-size", "0", "--image-size", "0", "--hidden-dim", "0",
                 "--classes", "4", "8", "--workers", "0"]

    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "2", *automatic]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert TrainConfig.load(run / "config.json").backbone != "auto"


def test_finished_run_says_how_to_train_longer(demo_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0
    capsys.readouterr()

    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0
    assert "already finished at epoch 1 of 1. To train longer, run train again with a larger --epochs" in (
        capsys.readouterr().err
    )
    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "2", *FAST]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_finished_message_for_fewer_epochs_than_done():
    config = TrainConfig(image_folder="x", epochs=1)
    state = TrainingState(epoch=100, finished=True)

    message = finished_message(state, config)

    assert "finished at epoch 100, more than the 1 asked for now" in message
    assert "--epochs above 100" in message


def test_finished_message_for_spent_budget():
    config = TrainConfig(image_folder="x", time_budget=40.0)
    state = TrainingState(epoch=29, elapsed_seconds=40.5, finished=True)

    message = finished_message(state, config)

    assert "epoch 29: its time budget of 40 s is spent" in message
    assert "--time-budget 80" in message


def test_resume_may_change_precision(demo_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "1", "--precision", "bf16", *FAST]) == 0
    assert TrainConfig.load(run / "config.json").precision == "bf16"

    assert main(["train", str(demo_folder), "--out", str(run), "--epochs", "2", "--precision", "fp32", *FAST]) == 0
    assert TrainConfig.load(run / "config.json").precision == "fp32"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def _config(folder: Path, epochs: int) -> TrainConfig:
    return TrainConfig(image_folder=str(folder), class_counts=(4, 8), epochs=epochs, batch_size=16,
                       image_size=32, workers=0, hidden_dim=64, nn_queue_size=32)


def _fit(config: TrainConfig, run: Path) -> Trainer:
    config, cache = prepare_images(config, run)
    trainer = Trainer(config, cache, run, config.batch_size, torch.device("cpu"))
    trainer.fit()
    return trainer


def test_trainer_augments_with_the_configured_colour_and_crops(demo_folder, tmp_path):
    config = _config(demo_folder, epochs=1).replace(color_strength=0.0, min_crop_scale=0.5)
    augment = _fit(config, tmp_path / "run").augment.config
    assert (augment.jitter_probability, augment.grayscale_probability) == (0.0, 0.0)
    assert augment.global_scale == (0.5, 1.0)


def test_resume_after_interruption_matches_uninterrupted_run(demo_folder, tmp_path, monkeypatch):
    straight = _fit(_config(demo_folder, 3), tmp_path / "straight")

    interrupted_run = tmp_path / "interrupted"
    original = Trainer._train_epoch
    calls = {"count": 0}

    def stop_in_second_epoch(self):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _fit(_config(demo_folder, 3), interrupted_run)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert [r["epoch"] for r in read_metrics(RunFiles(interrupted_run).metrics)] == [1]

    resumed = _fit(_config(demo_folder, 3), interrupted_run)

    records = read_metrics(RunFiles(interrupted_run).metrics)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert len(records) == len(read_metrics(RunFiles(tmp_path / "straight").metrics))
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert [r["loss"] for r in records] == pytest.approx(
        [r["loss"] for r in read_metrics(RunFiles(tmp_path / "straight").metrics)], rel=1e-5
    )


def test_sigkill_mid_epoch_then_restart_finishes(demo_folder, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "core", "train", str(demo_folder), "--out", str(run),
               "--epochs", "6", *FAST]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = RunFiles(run).metrics
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_metrics(metrics)) < 1:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(read_metrics(metrics))
    assert 1 <= done_before < 6

    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)

    assert [r["epoch"] for r in read_metrics(metrics)] == [1, 2, 3, 4, 5, 6]
    checkpoint = torch.load(RunFiles(run).checkpoint, weights_only=True)
    assert checkpoint["training"]["epoch"] == 6
    assert checkpoint["training"]["finished"] is True


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(demo_folder, tmp_path, monkeypatch, capsys):
    from core.loss import SelfClassifierLoss

    original = SelfClassifierLoss.forward
    calls = {"count": 0}

    def diverge_in_second_epoch(self, logits):
        calls["count"] += 1
        loss = original(self, logits)
        return loss * float("nan") if calls["count"] > 2 else loss

    monkeypatch.setattr(SelfClassifierLoss, "forward", diverge_in_second_epoch)
    run = tmp_path / "run"
    code = main(["train", str(demo_folder), "--out", str(run), "--epochs", "3", *FAST])

    assert code == 1
    errors = capsys.readouterr().err
    assert "the loss became nan at step 2" in errors
    assert "last good checkpoint" in errors
    checkpoint = torch.load(RunFiles(run).checkpoint, weights_only=True)
    assert checkpoint["training"]["epoch"] == 1
    assert checkpoint["training"]["step"] == 2


def test_label_writes_diagnostics_and_tree(demo_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["label", str(demo_folder), "--out", str(run), "--epochs", "1", *FAST]) == 0
    diagnostics = json.loads((run / "diagnostics.json").read_text())
    assert set(diagnostics["heads"]) == {"k4", "k8"}
    assert diagnostics["recommended_head"] in {"k4", "k8"}
    assert diagnostics["num_images"] == 40
    tree = json.loads((run / "class_tree.json").read_text())
    assert tree
