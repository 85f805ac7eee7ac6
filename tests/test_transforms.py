import pytest
import torch
from torchvision.ops import roi_align

from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    MultiCropAugment,
    color_jitter,
    crop_and_resize,
    multicrop_config,
    normalize,
    random_blur,
    random_grayscale,
    random_resized_crop,
    random_solarize,
)


def _images(batch=8, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)


def test_multicrop_shapes_and_normalisation():
    augment = MultiCropAugment(AugmentConfig(global_size=24, local_size=12, num_local_crops=3))
    views = augment(_images(), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(8, 3, 24, 24)] * 2 + [(8, 3, 12, 12)] * 3
    low = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    high = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for view in views:
        per_channel_min = view.amin(dim=(0, 2, 3))
        per_channel_max = view.amax(dim=(0, 2, 3))
        assert (per_channel_min >= low - 1e-4).all()
        assert (per_channel_max <= high + 1e-4).all()


def test_multicrop_same_generator_state_repeats():
    augment = MultiCropAugment(AugmentConfig(global_size=32))
    first = augment(_images(), torch.Generator().manual_seed(3))
    second = augment(_images(), torch.Generator().manual_seed(3))
    third = augment(_images(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(first[0], second[0])
    assert not torch.allclose(first[0], third[0])


def test_views_differ_per_sample():
    # The same image repeated must come out differently in each row.
    image = _images(batch=1).expand(16, -1, -1, -1)
    views = MultiCropAugment(AugmentConfig(global_size=32))(image, torch.Generator().manual_seed(0))
    rows = views[0].flatten(1)
    distinct = {tuple(row[:20].tolist()) for row in rows}
    assert len(distinct) == 16


def test_full_crop_of_constant_image_is_constant():
    images = torch.full((4, 3, 20, 20), 0.25)
    crops = random_resized_crop(images, 10, (0.3, 1.0), torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 10, 10)
    torch.testing.assert_close(crops, torch.full_like(crops, 0.25))


def test_crop_of_gradient_keeps_order():
    # A horizontal ramp stays increasing left to right (or decreasing, never mixed) after a crop.
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(6, 3, 32, 32).contiguous()
    crops = random_resized_crop(ramp, 16, (0.2, 1.0), torch.Generator().manual_seed(1))
    steps = crops[:, 0, 8, 1:] - crops[:, 0, 8, :-1]
    assert (steps >= -1e-6).all()


def test_grayscale_probability_one_gives_equal_channels():
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gray = random_grayscale(images, 1.0, torch.Generator())
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    torch.testing.assert_close(gray[:, 1], gray[:, 2])
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    torch.testing.assert_close(gray[:, 0], expected)


def test_solarize_inverts_bright_pixels_only():
    images = torch.tensor([0.1, 0.6, 0.9]).view(1, 3, 1, 1)
    out = random_solarize(images, 1.0, torch.Generator())
    torch.testing.assert_close(out.flatten(), torch.tensor([0.1, 0.4, 0.1]))


def test_blur_keeps_mean_and_smooths():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    blurred = random_blur(images, 1.0, torch.Generator().manual_seed(0))
    assert blurred.mean().item() == pytest.approx(images.mean().item(), abs=1e-2)
    assert blurred.std() < images.std()


def test_jitter_probability_zero_changes_nothing():
    config = AugmentConfig(global_size=8, jitter_probability=0.0)
    images = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(color_jitter(images, config, torch.Generator()), images)


def test_hue_shift_keeps_gray_pixels():
    config = AugmentConfig(global_size=8, jitter_probability=1.0, brightness=0, contrast=0, saturation=0, hue=0.5)
    gray = torch.full((3, 3, 4, 4), 0.5)
    torch.testing.assert_close(color_jitter(gray, config, torch.Generator().manual_seed(0)), gray)


def test_brightness_above_one_never_turns_crops_black():
    # Factors come from [max(0, 1 - s), 1 + s]. From [1 - s, 1 + s], a fifth of them would clamp to 0.
    config = AugmentConfig(global_size=8, jitter_probability=1.0, brightness=1.5, contrast=0, saturation=0, hue=0)
    images = torch.full((500, 3, 4, 4), 0.5)
    out = color_jitter(images, config, torch.Generator().manual_seed(0))
    assert (out.amax(dim=(1, 2, 3)) > 0).all()


@pytest.mark.parametrize(("strength", "expected"), [(1.0, (0.4, 0.4, 0.2, 0.1)), (0.5, (0.2, 0.2, 0.1, 0.05)),
                                                    (2.0, (0.8, 0.8, 0.4, 0.2))])
def test_color_strength_scales_jitter_ranges(strength, expected):
    config = multicrop_config(32, color_strength=strength, min_crop_scale=0.5)
    assert (config.brightness, config.contrast, config.saturation, config.hue) == pytest.approx(expected)
    assert config.global_scale == (0.5, 1.0)
    assert (config.jitter_probability, config.grayscale_probability) == (0.8, 0.2)


def test_color_strength_zero_keeps_every_colour():
    # Crops, flips and blur leave a uniform image as it is, so only colour changes could alter it.
    red = torch.tensor([200, 30, 60], dtype=torch.uint8).expand(64, 16, 16, 3)
    expected = normalize(red.permute(0, 3, 1, 2).float() / 255)
    plain = MultiCropAugment(multicrop_config(16, color_strength=0))(red, torch.Generator().manual_seed(0))
    jittered = MultiCropAugment(multicrop_config(16))(red, torch.Generator().manual_seed(0))
    for view in plain:
        torch.testing.assert_close(view, expected)
    assert not torch.allclose(jittered[0], expected, atol=1e-3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"global_size": 4}, "global crop size"), ({"num_local_crops": -1}, "local crops"),
     ({"num_local_crops": 2, "local_size": 0}, "local crop size")],
)
def test_augment_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**{"global_size": 32, **changes})


@pytest.mark.parametrize("size, sampling_ratio", [(24, 1), (8, 2)], ids=["enlarging", "shrinking"])
def test_crop_and_resize_matches_roi_align(size, sampling_ratio):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 20, 28, generator=generator)
    corners = torch.rand(6, 2, generator=generator) * torch.tensor([12.0, 8.0])
    sides = 4 + torch.rand(6, 2, generator=generator) * torch.tensor([14.0, 10.0])
    boxes = torch.cat([corners, corners + sides], dim=1)
    if sampling_ratio == 2:
        assert ((boxes[:, 2:] - boxes[:, :2]) > size).any()
    else:
        assert ((boxes[:, 2:] - boxes[:, :2]) <= size).all()

    crops = crop_and_resize(images, boxes, size)

    indexed = torch.cat([torch.arange(6, dtype=boxes.dtype)[:, None], boxes], dim=1)
    expected = roi_align(images, indexed, output_size=size, spatial_scale=1.0,
                         sampling_ratio=sampling_ratio, aligned=True)
    torch.testing.assert_close(crops, expected, atol=1e-5, rtol=1e-5)
