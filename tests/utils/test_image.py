"""Image loading limits: the pixel cap is checked from the header, and 16-bit images convert without a
float64 copy of the whole image."""

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from chatrex.utils.image import MAX_IMAGE_PIXELS, ImageLoadError, load_image, to_rgb


def test_the_pixel_cap_is_below_pils_bomb_limit_and_checked_before_decoding(tmp_path):
    assert MAX_IMAGE_PIXELS <= Image.MAX_IMAGE_PIXELS
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1  # just above the cap: a 1-bit PNG of a few kB
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path)
    with pytest.raises(ImageLoadError, match="more than the limit"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="more than the limit"):
        load_image(Image.new("1", (side, side)))


def _reference(arr):
    """The stretch computed in float64 (what the conversion must equal)."""
    a = arr.astype(np.float64)
    lo, hi = a.min(), a.max()
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255.0).round().astype(np.uint8)


@pytest.mark.parametrize("mode, dtype", [("I;16", np.uint16), ("I", np.int32), ("F", np.float32)])
def test_high_bit_depth_images_are_stretched_to_8_bits(mode, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((300, 41)) * 3000 + 100).astype(dtype)
    arr[0, 0], arr[1, 1] = 100, 3100
    image = Image.fromarray(arr)
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (300, 41, 3)
    assert np.array_equal(rgb[..., 0], _reference(arr)) and np.array_equal(rgb[..., 0], rgb[..., 2])
    flat = Image.fromarray(np.full((5, 5), 7, np.uint16))
    assert np.asarray(to_rgb(flat)).max() == 0


def test_a_16_bit_image_converts_without_a_float64_copy():
    side = 1024
    image = Image.fromarray((np.arange(side * side) % 60_000).astype(np.uint16).reshape(side, side))
    assert image.mode == "I;16"
    tracemalloc.start()
    try:
        to_rgb(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the uint16 pixels (2 MiB) and the uint8 result (1 MiB); one float64 copy alone would be 8 MiB
    assert peak < 5 * 2**20, peak
