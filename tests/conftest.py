import shutil
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def copy_demo_images(target: Path, classes: int = 4, per_class: int = 10) -> Path:
    """Copy ``per_class`` images of the first ``classes`` demo classes into ``target``."""
    for class_dir in sorted(DEMO.iterdir())[:classes]:
        destination = target / class_dir.name
        destination.mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(image, destination / image.name)
    return target


@pytest.fixture
def demo_folder(tmp_path: Path) -> Path:
    """40 demo images (4 classes of 10) in class folders."""
    return copy_demo_images(tmp_path / "images")
