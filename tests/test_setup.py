import pytest
from PIL import Image

from core.config import ConfigError, TrainConfig
from core.setup import auto_image_size, resolve_batch_size


def _write_images(folder, size, count=5):
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", size).save(folder / f"{index}.png")
    return [f"{index}.png" for index in range(count)]


@pytest.mark.parametrize(("size", "cap", "expected"), [((32, 32), 64, 32), ((640, 480), 64, 64),
                                                        ((640, 480), 224, 224), ((100, 90), 224, 88)])
def test_auto_image_size_follows_images(tmp_path, size, cap, expected):
    paths = _write_images(tmp_path / "images", size)
    assert auto_image_size(tmp_path / "images", paths, cap) == expected


def test_auto_batch_size_fits_small_folder():
    config = TrainConfig(image_folder="x")
    assert resolve_batch_size(config, 1000) == 256
    assert resolve_batch_size(config, 41) == 40


def test_too_few_images_message():
    with pytest.raises(ValueError, match="found 3 usable images in x; at least 4"):
        resolve_batch_size(TrainConfig(image_folder="x"), 3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"class_counts": (10, 1)}, "at least 2, got 1"), ({"class_counts": ()}, "at least one class count"),
     ({"backbone": "vgg"}, "unknown backbone 'vgg'"), ({"device": "tpu"}, "unknown device 'tpu'"),
     ({"precision": "fp16"}, "unknown precision 'fp16'"), ({"epochs": 0}, "epochs must be at least 1"),
     ({"batch_size": 1}, "batch size must be at least 2"), ({"color_strength": -0.5}, "colour strength"),
     ({"color_strength": 2.5}, "between 0 and 2, got 2.5"), ({"min_crop_scale": 0.0}, "minimum crop scale"),
     ({"min_crop_scale": 1.5}, "above 0 and at most 1, got 1.5"), ({"weight_decay": -1e-4}, "weight decay"),
     ({"weight_decay": float("nan")}, "weight decay must be >= 0, got nan"), ({"momentum": 1.0}, "momentum"),
     ({"row_tau": 0.0}, "row temperature"), ({"col_tau": -0.05}, "column temperature"), ({"eps": 0.0}, "eps"),
     ({"embedding_dim": 1}, "embedding dimension"), ({"hidden_dim": -5}, "hidden dimension"),
     ({"hidden_layers": -1}, "hidden layers"), ({"local_size": 4}, "local crop size"), ({"seed": -1}, "seed")],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(image_folder="x", **changes)


def test_config_round_trip(tmp_path):
    config = TrainConfig(image_folder="x", class_counts=(5, 7), time_budget=30.0)
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_config_load_names_file_of_invalid_setting(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"image_folder": "x", "row_tau": 0}', encoding="utf-8")

    with pytest.raises(ValueError, match="invalid run settings in .*config.json: row temperature") as raised:
        TrainConfig.load(path)

    assert not isinstance(raised.value, ConfigError)
