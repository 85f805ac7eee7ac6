import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from data.cache import build_cache

BAD_NAME = os.fsdecode(b"caf\xe9.png")


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, value in (("a.png", 40), (BAD_NAME, 200)):
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(folder / name)
    return folder


def test_cache_skips_name_that_is_not_utf8(tmp_path):
    folder = _folder(tmp_path)

    cache = build_cache(folder, ["a.png", BAD_NAME], 8, tmp_path / "cache", workers=0)

    assert cache.paths == ["a.png"]
    assert [item.path for item in cache.skipped] == [BAD_NAME]
    assert cache.skipped[0].reason.startswith("the file name is not valid UTF-8")
    assert int(cache.images[0, 0, 0, 0]) == 40


def test_cache_listing_unusable_name_is_rebuilt(tmp_path):
    folder = _folder(tmp_path)
    paths = ["a.png", BAD_NAME]
    build_cache(folder, paths, 8, tmp_path / "cache", workers=0)
    # A cache written before such names were skipped lists the name among its images.
    index_path = tmp_path / "cache" / "images_8.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index.update(paths=paths, skipped=[])
    index_path.write_text(json.dumps(index), encoding="utf-8")

    cache = build_cache(folder, paths, 8, tmp_path / "cache", workers=0)

    assert cache.paths == ["a.png"]
    assert [item.path for item in cache.skipped] == [BAD_NAME]
