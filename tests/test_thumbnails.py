import os
from pathlib import Path

import pytest
from PIL import Image

from core.thumbnails import (
    ThumbnailStore,
    UnsafePathError,
    check_relative_path,
    load_preview,
    resolve_image_path,
)

EXIF_ORIENTATION = 0x0112


def _save_jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (200, 30, 30))
    # Paint the left half blue, so a wrong rotation changes which side is blue.
    image.paste((30, 30, 200), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    _save_jpeg(images / "wide.jpg", (400, 200))
    _save_jpeg(images / "sub" / "turned.jpg", (400, 200), orientation=6)
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    return images


def test_thumbnail_fits_the_box(folder, tmp_path):
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100)

    with Image.open(store.get("wide.jpg")) as thumbnail:
        assert thumbnail.format == "JPEG"
        assert thumbnail.size == (100, 50)


def test_thumbnail_applies_exif_orientation(folder, tmp_path):
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100)

    with Image.open(store.get("sub/turned.jpg")) as thumbnail:
        # Orientation 6 turns the stored 400x200 image by 90 degrees to 200x400.
        assert thumbnail.size == (50, 100)
        top_pixel = thumbnail.convert("RGB").getpixel((25, 5))
    # After the turn the blue left half of the stored image is at the top.
    assert top_pixel[2] > top_pixel[0]


def test_thumbnail_is_reused(folder, tmp_path):
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100)
    first = store.get("wide.jpg")
    made_at = first.stat().st_mtime_ns

    second = store.get("wide.jpg")

    assert second == first
    assert second.stat().st_mtime_ns == made_at


def test_thumbnail_remade_when_source_changes(folder, tmp_path):
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100)
    thumbnail = store.get("wide.jpg")
    old = thumbnail.stat().st_mtime_ns - 10_000_000_000
    os.utime(thumbnail, ns=(old, old))
    _save_jpeg(folder / "wide.jpg", (200, 400))

    with Image.open(store.get("wide.jpg")) as remade:
        assert remade.size == (50, 100)


def test_thumbnail_paths_differ_per_image_and_size(folder, tmp_path):
    small = ThumbnailStore(folder, tmp_path / "thumbs", side=100)
    large = ThumbnailStore(folder, tmp_path / "thumbs", side=200)

    assert small.path_for("wide.jpg") != small.path_for("sub/turned.jpg")
    assert small.path_for("wide.jpg") != large.path_for("wide.jpg")
    assert small.path_for("wide.jpg").is_relative_to(tmp_path / "thumbs")


def test_get_many_returns_none_for_broken_images(folder, tmp_path):
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100)

    results = store.get_many(["wide.jpg", "broken.jpg", "../outside.jpg", "missing.jpg"])

    assert results[0] is not None and results[0].exists()
    assert results[1:] == [None, None, None]


def test_build_all_counts_failures_and_reports_progress(folder, tmp_path):
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100)
    progress = []

    failed = store.build_all(["wide.jpg", "broken.jpg", "sub/turned.jpg"], lambda done, total: progress.append(
        (done, total)), chunk=2)

    assert failed == 1
    assert progress == [(2, 3), (3, 3)]


def test_load_preview_is_upright_and_bounded(folder):
    preview = load_preview(folder, "sub/turned.jpg", side=120)

    assert preview.size == (60, 120)


@pytest.mark.parametrize("rel_path", ["", "/etc/passwd", "../secret.jpg", "sub/../../secret.jpg",
                                      "a\\..\\..\\b.jpg", "\\server\\share.jpg", "bad\x00name.jpg"])
def test_check_relative_path_rejects(rel_path):
    with pytest.raises(UnsafePathError):
        check_relative_path(rel_path)


@pytest.mark.parametrize("rel_path", ["a.jpg", "sub/b.jpg", "./c.jpg", "name with spaces.png", "x..y.jpg"])
def test_check_relative_path_accepts(rel_path):
    check_relative_path(rel_path)


def test_resolve_image_path_inside_folder(folder):
    assert resolve_image_path(folder, "sub/turned.jpg") == (folder / "sub" / "turned.jpg").resolve()


def test_resolve_image_path_rejects_dot_dot(folder):
    with pytest.raises(UnsafePathError, match="contains '..'"):
        resolve_image_path(folder, "../images/wide.jpg")


def test_resolve_image_path_rejects_symlink_escape(folder, tmp_path):
    outside = _save_jpeg(tmp_path / "private" / "secret.jpg", (40, 40))
    (folder / "link.jpg").symlink_to(outside)
    (folder / "linked_folder").symlink_to(outside.parent, target_is_directory=True)

    with pytest.raises(UnsafePathError, match="outside the image folder"):
        resolve_image_path(folder, "link.jpg")
    with pytest.raises(UnsafePathError, match="outside the image folder"):
        resolve_image_path(folder, "linked_folder/secret.jpg")


def test_symlink_inside_folder_is_allowed(folder):
    (folder / "alias.jpg").symlink_to(folder / "wide.jpg")

    assert resolve_image_path(folder, "alias.jpg") == (folder / "wide.jpg").resolve()


def test_thumbnail_store_never_reads_outside(folder, tmp_path):
    outside = _save_jpeg(tmp_path / "private" / "secret.jpg", (40, 40))
    (folder / "link.jpg").symlink_to(outside)
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100)

    with pytest.raises(UnsafePathError):
        store.get("link.jpg")
    assert not store.path_for("link.jpg").exists()


def test_resolve_image_path_reaches_appended_folder(folder, tmp_path):
    appended = _save_jpeg(tmp_path / "new" / "cat.jpg", (40, 40))

    resolved = resolve_image_path(folder, "../new/cat.jpg", extra_folders=[tmp_path / "new"])

    assert resolved == appended.resolve()


def test_dot_dot_outside_appended_folders_rejected(folder, tmp_path):
    _save_jpeg(tmp_path / "private" / "secret.jpg", (40, 40))
    (tmp_path / "new").mkdir()

    with pytest.raises(UnsafePathError, match="outside the image folder .* and the appended folders"):
        resolve_image_path(folder, "../private/secret.jpg", extra_folders=[tmp_path / "new"])
    with pytest.raises(UnsafePathError, match="is absolute"):
        resolve_image_path(folder, str(tmp_path / "new" / "cat.jpg"), extra_folders=[tmp_path / "new"])


def test_thumbnail_store_shows_appended_images(folder, tmp_path):
    _save_jpeg(tmp_path / "new" / "cat.jpg", (300, 150))
    store = ThumbnailStore(folder, tmp_path / "thumbs", side=100, extra_folders=(tmp_path / "new",))

    with Image.open(store.get("../new/cat.jpg")) as thumbnail:
        assert thumbnail.size == (100, 50)
