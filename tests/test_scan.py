import logging
import os
from pathlib import Path

import pytest

from core.run_files import RunFiles
from data.scan import (
    IMAGE_EXTENSIONS,
    RUN_FOLDER_MARKERS,
    contains_image_files,
    ground_truth_label,
    printable_path,
    scan_folder,
    unusable_name_reason,
)


def _touch(root: Path, *rel_paths: str) -> None:
    for rel_path in rel_paths:
        path = root / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_extensions_are_lower_case_suffixes() -> None:
    assert all(suffix.startswith(".") and suffix == suffix.lower() for suffix in IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".heic", ".heif", ".tif", ".tiff", ".webp"} <= IMAGE_EXTENSIONS


def test_scan_nested_sorted_posix(tmp_path: Path) -> None:
    _touch(tmp_path, "zebra.jpeg", "b/x.JPG", "a/c/y.png", "a/c/z.Tiff", "B/w.heic", "a/top.webp")

    found = scan_folder(tmp_path)

    assert found == ["B/w.heic", "a/c/y.png", "a/c/z.Tiff", "a/top.webp", "b/x.JPG", "zebra.jpeg"]


def test_scan_ignores_hidden_and_non_images(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "keep.png",
        ".hidden.jpg",
        ".cache/inside.jpg",
        "a/.thumbs/t.png",
        "a/notes.txt",
        "a/README",
        "a/archive.jpg.zip",
        "a/photo.gif",
    )

    found = scan_folder(tmp_path)

    assert found == ["a/photo.gif", "keep.png"]


def test_scan_skips_run_folders_inside_root(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jpg", "run/config.json", "run/run.log", "run/thumbnails/ab/cd.jpg",
           "logs/run.log", "logs/b.jpg")

    assert scan_folder(tmp_path) == ["a.jpg", "logs/b.jpg"]
    assert scan_folder(tmp_path / "run") == ["thumbnails/ab/cd.jpg"]


def test_run_folder_markers_are_run_file_names() -> None:
    files = RunFiles(Path("run"))
    assert RUN_FOLDER_MARKERS == {files.config.name, files.log.name}


def test_scan_skips_folder_named_like_image(tmp_path: Path) -> None:
    _touch(tmp_path, "album.jpg/inner.png")

    assert scan_folder(tmp_path) == ["album.jpg/inner.png"]


def test_scan_empty_folder(tmp_path: Path) -> None:
    assert scan_folder(tmp_path) == []
    assert not contains_image_files(tmp_path)


def test_contains_images_searches_sub_folders(tmp_path: Path) -> None:
    _touch(tmp_path, "notes.txt", ".hidden/a.jpg")
    assert not contains_image_files(tmp_path)

    _touch(tmp_path, "deep/er/photo.JPG")
    assert contains_image_files(tmp_path)


def test_scan_symlink_loop_terminates(tmp_path: Path) -> None:
    _touch(tmp_path, "a/one.jpg", "a/b/two.jpg")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "root").symlink_to(tmp_path, target_is_directory=True)

    found = scan_folder(tmp_path)

    assert found == ["a/b/two.jpg", "a/one.jpg"]


def test_scan_symlinked_outside_folder_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    _touch(outside, "p.jpg", "deeper/q.png")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "second_link").symlink_to(outside, target_is_directory=True)

    found = scan_folder(root)

    assert found == ["link/deeper/q.png", "link/p.jpg"]


def test_scan_symlink_inside_root_keeps_real_path(tmp_path: Path) -> None:
    # The link sorts before the real folder, but the real path still wins
    _touch(tmp_path, "real/p.jpg")
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)

    assert scan_folder(tmp_path) == ["real/p.jpg"]


def test_scan_follows_file_symlink_and_lists_broken_one(tmp_path: Path) -> None:
    _touch(tmp_path, "real.png")
    (tmp_path / "linked.png").symlink_to(tmp_path / "real.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "broken_dir").symlink_to(tmp_path / "missing_dir", target_is_directory=True)
    (tmp_path / "broken.txt").symlink_to(tmp_path / "missing.txt")

    # The broken image link is listed so that decoding reports it as skipped.
    assert scan_folder(tmp_path) == ["broken.png", "linked.png", "real.png"]


def test_scan_warns_of_fifo_and_ignores_folder_link(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "pipe.jpg").symlink_to(tmp_path / "pipe")
    _touch(tmp_path, "album/a.jpg")
    (tmp_path / "album.jpg").symlink_to(tmp_path / "album", target_is_directory=True)

    with caplog.at_level(logging.WARNING):
        assert scan_folder(tmp_path) == ["album/a.jpg"]
    assert [record.getMessage() for record in caplog.records] == [
        f"Skipping {tmp_path / 'pipe.jpg'}: not a regular file (a FIFO, socket or device)"]


def test_scan_lists_link_loop_once_for_decoding(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "loop_a.jpg").symlink_to(tmp_path / "loop_b.jpg")
    (tmp_path / "loop_b.jpg").symlink_to(tmp_path / "loop_a.jpg")

    with caplog.at_level(logging.WARNING):
        assert scan_folder(tmp_path) == ["loop_a.jpg", "loop_b.jpg"]
    assert not caplog.records


def test_printable_path_escapes_bytes_that_are_not_utf8() -> None:
    name = os.fsdecode(b"caf\xe9/\xff.png")
    assert printable_path(name) == "caf\\xe9/\\xff.png"
    assert unusable_name_reason(name).startswith("the file name is not valid UTF-8")
    assert printable_path("été/ok.png") == "été/ok.png"
    assert unusable_name_reason("été/ok.png") is None


def test_scan_unreadable_subfolder_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _touch(tmp_path, "ok/a.jpg", "locked/b.jpg")
    locked = os.fspath(tmp_path / "locked")
    real_scandir = os.scandir

    def scandir_denying_locked(path: str) -> object:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_denying_locked)
    with caplog.at_level(logging.WARNING, logger="data.scan"):
        found = scan_folder(tmp_path)

    assert found == ["ok/a.jpg"]
    assert "locked" in caplog.text
    assert "Permission denied" in caplog.text


def test_scan_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    with pytest.raises(FileNotFoundError, match=r"Image folder .*nope does not exist"):
        scan_folder(missing)


def test_scan_file_root(tmp_path: Path) -> None:
    _touch(tmp_path, "photo.jpg")

    with pytest.raises(NotADirectoryError, match=r"photo\.jpg is a file, not a folder"):
        scan_folder(tmp_path / "photo.jpg")


@pytest.mark.parametrize(
    ("rel_path", "label"),
    [("cats/a.jpg", "cats"), ("animals/dogs/b.png", "dogs"), ("top.jpg", "")],
)
def test_ground_truth_label(rel_path: str, label: str) -> None:
    assert ground_truth_label(rel_path) == label
