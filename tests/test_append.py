import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO

from core.append import append_to_run, labels_path, select_new_images
from core.appended_folders import read_appended_folders
from core.cli import main
from core.config import TrainConfig
from core.embedding_map import place_by_neighbours
from core.jobs import append as jobs_append
from core.jobs import assign
from core.labels_csv import read_labels_csv
from core.run_files import RunFiles
from core.thumbnails import resolve_image_path

FAST = ["--epochs", "1", "--batch-size", "8", "--classes", "3", "5", "--image-size", "32", "--workers", "0",
        "--hidden-dim", "32"]


def _copy_images(target: Path, classes: list[str], per_class: int, offset: int = 0) -> Path:
    for name in classes:
        (target / name).mkdir(parents=True)
        for image in sorted((DEMO / name).iterdir())[offset:offset + per_class]:
            shutil.copy(image, target / name / image.name)
    return target


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run labelled on 16 demo images of 2 classes, trained for one epoch."""
    base = tmp_path_factory.mktemp("labelled")
    images = _copy_images(base / "images", ["airplane", "bird"], per_class=8)
    run = base / "run"
    assert main(["label", str(images), "--out", str(run), *FAST]) == 0
    return run, images


@pytest.fixture
def run(labelled_run, tmp_path) -> Path:
    """A private copy of the labelled run and of its image folder."""
    source_run, source_images = labelled_run
    images = shutil.copytree(source_images, tmp_path / "images")
    run = shutil.copytree(source_run, tmp_path / "run", ignore=shutil.ignore_patterns("cache"))
    files = RunFiles(run)
    TrainConfig.load(files.config).replace(image_folder=str(images)).save(files.config)
    return run


@pytest.fixture
def second_folder(tmp_path) -> Path:
    """10 demo images of 2 classes, outside the run's image folder."""
    return _copy_images(tmp_path / "new" / "photos", ["cat", "deer"], per_class=5)


def test_append_adds_rows_of_second_folder(run, second_folder, tmp_path):
    files = RunFiles(run)
    before = read_labels_csv(files.labels)
    embeddings_before = np.load(files.embeddings)

    result = append_to_run(run, second_folder, device_name="cpu", workers=0)

    after = read_labels_csv(files.labels)
    embeddings_after = np.load(files.embeddings)
    assert len(result.added) == 10
    assert result.num_rows == 26
    assert len(after.paths) == 26
    assert embeddings_after.shape == (26, 128)
    assert len(set(after.paths)) == 26
    assert after.paths[:16] == before.paths
    np.testing.assert_array_equal(after.classes[:16], before.classes)
    np.testing.assert_array_equal(after.confidences[:16], before.confidences)
    np.testing.assert_array_equal(embeddings_after[:16], embeddings_before)
    assert after.paths[16:] == result.added
    assert result.added[0] == "../new/photos/cat/0000.jpg"
    image_root = Path(TrainConfig.load(files.config).image_folder)
    for path in result.added:
        assert (image_root / path).resolve().is_relative_to(second_folder.resolve())
    assert read_appended_folders(run) == [second_folder.resolve()]


def test_appended_rows_match_plain_assign(run, second_folder, tmp_path):
    append_to_run(run, second_folder, device_name="cpu", workers=0)
    plain = assign(run, second_folder, tmp_path / "new.csv", "cpu", 0)

    appended = read_labels_csv(RunFiles(run).labels)
    np.testing.assert_array_equal(appended.classes[16:], plain.classes)
    np.testing.assert_allclose(appended.confidences[16:], plain.confidences, atol=1e-6)
    np.testing.assert_allclose(np.load(RunFiles(run).embeddings)[16:], plain.embeddings, atol=1e-6)


def test_assign_other_folder_keeps_run_labels(run, second_folder):
    files = RunFiles(run)
    before = files.labels.read_bytes()

    with pytest.raises(ValueError, match="not the run's image folder .* Pass --csv NEW.csv"):
        assign(run, second_folder, None, "cpu", 0)
    with pytest.raises(ValueError, match="would replace"):
        assign(run, second_folder, files.labels, "cpu", 0)

    assert files.labels.read_bytes() == before
    assert not (run / "labels.embeddings.npy").exists()


def test_assign_other_csv_keeps_run_files(run, second_folder, tmp_path, caplog):
    files = RunFiles(run)
    jobs_append(run, second_folder, device_name="cpu", workers=0)
    assert json.loads(files.diagnostics.read_text(encoding="utf-8"))["num_images"] == 26
    before = {path: path.read_bytes() for path in (files.labels, files.embeddings, files.skipped)}
    image_folder = Path(TrainConfig.load(files.config).image_folder)

    result = assign(run, image_folder, tmp_path / "own.csv", "cpu", 0)

    assert len(result.paths) == 16
    assert {path: path.read_bytes() for path in before} == before
    assert np.load(tmp_path / "own.embeddings.npy").shape == (16, 128)
    assert (tmp_path / "own.skipped.csv").exists()

    # Rewriting RUN/labels.csv from the image folder logs how to add the appended images again.
    with caplog.at_level(logging.WARNING):
        assign(run, None, None, "cpu", 0)
    assert len(read_labels_csv(files.labels).paths) == 16
    assert f"assign {run} FOLDER --append for each of: {second_folder.resolve()}" in caplog.text


@pytest.mark.parametrize("name", ["embeddings.npy", "skipped.csv", "config.json", "edits.json", ".lock",
                                  "cache/images_32.npy"])
def test_assign_csv_never_replaces_run_files(run, second_folder, name):
    files = RunFiles(run)
    target = run / name
    before = {path: path.read_bytes() for path in run.iterdir() if path.is_file()}

    with pytest.raises(ValueError, match=f"would write {target}, which belongs to the run {run}"):
        assign(run, second_folder, target, "cpu", 0)

    assert {path: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    assert not (run / f"{target.stem}.embeddings.npy").exists()
    assert files.labels.exists()


def test_assign_csv_never_replaces_another_runs_files(run, second_folder, tmp_path):
    other = shutil.copytree(run, tmp_path / "other_run")
    before = RunFiles(other).labels.read_bytes()

    with pytest.raises(ValueError, match=f"which belongs to the run {other}"):
        assign(run, second_folder, other / "labels.csv", "cpu", 0)

    assert RunFiles(other).labels.read_bytes() == before


def test_assign_csv_companion_folder_rejected(run, second_folder, tmp_path):
    (tmp_path / "photos.embeddings.npy").mkdir()

    with pytest.raises(ValueError, match="photos.embeddings.npy, which is a folder"):
        assign(run, second_folder, tmp_path / "photos.csv", "cpu", 0)

    assert not (tmp_path / "photos.embeddings.partial.npy").exists()


def test_assign_csv_link_to_run_labels(run, tmp_path):
    files = RunFiles(run)
    link = tmp_path / "run_labels.csv"
    link.symlink_to(files.labels)
    files.labels.write_text(files.labels.read_text(encoding="utf-8") + "stale.jpg,0,0.5,0,0.5,0,0.5\n",
                            encoding="utf-8")

    assign(run, None, link, "cpu", 0)

    assert link.is_symlink()
    rows = len(read_labels_csv(files.labels).paths)
    assert rows == 16
    assert np.load(files.embeddings).shape[0] == rows


def test_assign_csv_into_new_folder(run, second_folder, tmp_path):
    target = tmp_path / "brand" / "new" / "photos.csv"

    result = assign(run, second_folder, target, "cpu", 0)

    assert len(read_labels_csv(target).paths) == len(result.paths) == 10
    assert np.load(target.with_name("photos.embeddings.npy")).shape == (10, 128)


def test_assign_csv_protects_run_without_log(run, second_folder, tmp_path):
    shared = tmp_path / "shared_model"
    shared.mkdir()
    for name in ("config.json", "checkpoint.pt", "labels.csv"):
        shutil.copy(run / name, shared / name)

    with pytest.raises(ValueError, match=f"which belongs to the run {shared}"):
        assign(run, second_folder, shared / "labels.csv", "cpu", 0)


def test_interrupted_assign_leaves_run_files_matching(run, monkeypatch):
    files = RunFiles(run)
    image_root = Path(TrainConfig.load(files.config).image_folder)
    shutil.copy(DEMO / "ship" / "0000.jpg", image_root / "extra.jpg")
    before = {path: path.read_bytes() for path in (files.labels, files.embeddings)}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("core.jobs.write_labels_csv", interrupt)
    with pytest.raises(KeyboardInterrupt):
        assign(run, None, None, "cpu", 0)

    assert {path: path.read_bytes() for path in before} == before
    assert [path.name for path in run.iterdir() if path.name.startswith(".") and path.name != ".lock"] == []


def test_assign_csv_new_name_in_run_folder(run, second_folder):
    embeddings_before = RunFiles(run).embeddings.read_bytes()

    result = assign(run, second_folder, run / "photos.csv", "cpu", 0)

    assert len(result.paths) == 10
    assert np.load(run / "photos.embeddings.npy").shape == (10, 128)
    assert RunFiles(run).embeddings.read_bytes() == embeddings_before


def test_assign_csv_folder_or_under_file_is_rejected(run, second_folder, tmp_path):
    with pytest.raises(ValueError, match="is a folder. Give a file name, for example"):
        assign(run, second_folder, tmp_path, "cpu", 0)

    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=f"is inside {blocker}, which is a file or a broken link"):
        assign(run, second_folder, blocker / "labels.csv", "cpu", 0)

    broken = tmp_path / "gone"
    broken.symlink_to(tmp_path / "missing", target_is_directory=True)
    with pytest.raises(ValueError, match=f"is inside {broken}, which is a file or a broken link"):
        assign(run, second_folder, broken / "labels.csv", "cpu", 0)


def test_append_twice_adds_nothing(run, second_folder):
    append_to_run(run, second_folder, device_name="cpu", workers=0)
    labels_before = RunFiles(run).labels.read_bytes()

    result = append_to_run(run, second_folder, device_name="cpu", workers=0)

    assert result.added == []
    assert len(result.duplicates) == 10
    assert result.num_rows == 26
    assert RunFiles(run).labels.read_bytes() == labels_before


def test_append_through_symlink_adds_nothing(run, second_folder, tmp_path):
    append_to_run(run, second_folder, device_name="cpu", workers=0)
    link = tmp_path / "link"
    os.symlink(second_folder, link, target_is_directory=True)

    result = append_to_run(run, link, device_name="cpu", workers=0)

    assert result.added == []
    assert len(result.duplicates) == 10


def test_append_own_folder_adds_only_new_files(run):
    image_root = Path(TrainConfig.load(RunFiles(run).config).image_folder)
    shutil.copytree(DEMO / "ship", image_root / "ship", ignore=lambda folder, names: sorted(names)[2:])

    result = append_to_run(run, image_root, device_name="cpu", workers=0)

    assert result.added == ["ship/0000.jpg", "ship/0001.jpg"]
    assert len(result.duplicates) == 16
    assert read_labels_csv(RunFiles(run).labels).paths[-2:] == result.added
    assert read_appended_folders(run) == []


def test_append_records_linked_folder_outside_image_folder(run, second_folder):
    image_root = Path(TrainConfig.load(RunFiles(run).config).image_folder)
    (image_root / "linked").symlink_to(second_folder, target_is_directory=True)

    result = append_to_run(run, image_root / "linked", device_name="cpu", workers=0)

    assert len(result.added) == 10
    assert read_appended_folders(run) == [second_folder.resolve()]


def test_append_records_targets_of_links_inside_folder(run, second_folder, tmp_path):
    outside = _copy_images(tmp_path / "elsewhere", ["frog"], per_class=3)
    (second_folder / "cat" / "more").symlink_to(outside / "frog", target_is_directory=True)

    result = append_to_run(run, second_folder, device_name="cpu", workers=0)

    assert len(result.added) == 13
    assert read_appended_folders(run) == [second_folder.resolve(), (outside / "frog").resolve()]
    image_root = Path(TrainConfig.load(RunFiles(run).config).image_folder)
    for path in result.added:
        resolve_image_path(image_root, path, extra_folders=read_appended_folders(run))


def test_appending_link_target_lets_app_show_linked_images(run, tmp_path):
    files = RunFiles(run)
    image_root = Path(TrainConfig.load(files.config).image_folder)
    outside = _copy_images(tmp_path / "elsewhere", ["frog"], per_class=3)
    (image_root / "linked").symlink_to(outside / "frog", target_is_directory=True)
    assign(run, None, None, "cpu", 0)
    linked = [path for path in read_labels_csv(files.labels).paths if path.startswith("linked/")]
    assert len(linked) == 3

    result = append_to_run(run, outside / "frog", device_name="cpu", workers=0)

    assert result.added == []
    for path in linked:
        resolve_image_path(image_root, path, extra_folders=read_appended_folders(run))


def test_interrupted_append_leaves_no_scratch_files(run, second_folder, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("core.assign.normalize", interrupt)
    before = sorted(path.name for path in run.iterdir())
    with pytest.raises(KeyboardInterrupt):
        append_to_run(run, second_folder, device_name="cpu", workers=0)

    assert sorted(path.name for path in run.iterdir() if path.name != "appended_folders.json") == before


def test_append_records_folder_before_rows(run, second_folder, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("core.append._write_rows", interrupt)
    with pytest.raises(KeyboardInterrupt):
        append_to_run(run, second_folder, device_name="cpu", workers=0)

    assert read_appended_folders(run) == [second_folder.resolve()]


def test_append_with_nothing_new_repairs_folder_record(run, second_folder):
    append_to_run(run, second_folder, device_name="cpu", workers=0)
    RunFiles(run).appended_folders.unlink()

    result = append_to_run(run, second_folder, device_name="cpu", workers=0)

    assert result.added == []
    assert read_appended_folders(run) == [second_folder.resolve()]


def test_append_merges_skipped_files(run, second_folder):
    (second_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff")

    result = append_to_run(run, second_folder, device_name="cpu", workers=0)

    assert [item.path for item in result.skipped] == ["../new/photos/cat/broken.jpg"]
    assert len(result.added) == 10
    with open(RunFiles(run).skipped, encoding="utf-8", newline="") as handle:
        listed = [row["path"] for row in csv.DictReader(handle)]
    assert "../new/photos/cat/broken.jpg" in listed


def test_append_skips_name_that_is_not_utf8(run, second_folder):
    image = next((second_folder / "cat").iterdir())
    shutil.copy(image, second_folder / "cat" / os.fsdecode(b"caf\xe9.jpg"))

    for _ in range(2):
        result = append_to_run(run, second_folder, device_name="cpu", workers=0)
        assert [item.reason for item in result.skipped][0].startswith("the file name is not valid UTF-8")

    with open(RunFiles(run).skipped, encoding="utf-8", newline="") as handle:
        listed = [row["path"] for row in csv.DictReader(handle)]
    assert listed.count("../new/photos/cat/caf\\xe9.jpg") == 1
    assert len(read_labels_csv(RunFiles(run).labels).paths) == 26


def test_append_rejects_folder_path_that_is_not_utf8(run, second_folder):
    folder = second_folder.rename(second_folder.parent / os.fsdecode(b"photos\xfe"))
    with pytest.raises(ValueError, match=r"photos\\xfe is not valid UTF-8.*rename the folder"):
        append_to_run(run, folder, device_name="cpu", workers=0)
    assert len(read_labels_csv(RunFiles(run).labels).paths) == 16


def test_append_extends_index_and_map(run, second_folder, monkeypatch):
    from core import embedding_map
    from core.index import load_or_build_index

    # Fitting UMAP compiles numba code for half a minute; two embedding
    # coordinates stand in for it, since only the cached file matters here.
    def first_two_coordinates(vectors: np.ndarray, *args) -> np.ndarray:
        return np.array(vectors[:, :2], dtype=np.float32)

    monkeypatch.setattr(embedding_map, "compute_embedding_map", first_two_coordinates)
    files = RunFiles(run)
    map_before = embedding_map.load_or_compute_embedding_map(run)
    load_or_build_index(run)
    index_written = files.index.stat().st_mtime_ns

    append_to_run(run, second_folder, device_name="cpu", workers=0)

    map_after = embedding_map.cached_embedding_map(run)
    assert map_after is not None
    assert map_after.shape == (26, 2)
    np.testing.assert_array_equal(map_after[:16], map_before)
    index = load_or_build_index(run)
    assert len(index) == 26
    assert files.index.stat().st_mtime_ns != index_written
    embeddings = np.load(files.embeddings)
    _, rows = index.search(embeddings[20:21], 1)
    assert rows[0, 0] == 20


def test_append_rejects_unlabelled_run(run, second_folder):
    RunFiles(run).labels.unlink()
    with pytest.raises(ValueError, match="label the run's own folder first"):
        append_to_run(run, second_folder, device_name="cpu", workers=0)


def test_append_rejects_folder_without_images(run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found in"):
        append_to_run(run, tmp_path / "empty", device_name="cpu", workers=0)


def test_append_rejects_rows_out_of_step(run, second_folder):
    files = RunFiles(run)
    np.save(files.embeddings, np.load(files.embeddings)[:3])
    with pytest.raises(ValueError, match="has 3 rows but .* has 16"):
        append_to_run(run, second_folder, device_name="cpu", workers=0)


# ------------------------------------------------------------------ helpers


def test_labels_path_inside_and_outside_root(tmp_path):
    root = tmp_path / "images"
    assert labels_path(root / "cat" / "1.jpg", root) == "cat/1.jpg"
    assert labels_path(tmp_path / "new" / "1.jpg", root) == "../new/1.jpg"
    assert labels_path(root / "sub" / ".." / "2.jpg", root) == "2.jpg"


def test_select_new_images_skips_repeats(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    for name in ("1.jpg", "2.jpg"):
        (root / "a" / name).write_bytes(b"")

    new, stored, duplicates = select_new_images(root / "a", ["1.jpg", "2.jpg", "./2.jpg"], root, ["a/1.jpg"])

    assert new == ["2.jpg"]
    assert stored == ["a/2.jpg"]
    assert duplicates == ["a/1.jpg", "a/2.jpg"]


def test_place_by_neighbours_averages_nearest():
    old = np.eye(3, dtype=np.float32)
    coordinates = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    new = np.array([[1, 0, 0], [0.6, 0.8, 0]], dtype=np.float32)

    placed = place_by_neighbours(old, coordinates, new, neighbours=1)
    np.testing.assert_array_equal(placed, [[0, 0], [10, 0]])
    placed = place_by_neighbours(old, coordinates, new, neighbours=2)
    np.testing.assert_array_equal(placed, [[5, 0], [5, 0]])
