"""UPN preprocessing: the official resize rule, normalisation and padding/mask batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from chatrex.upn.transforms import IMAGENET_MEAN, IMAGENET_STD, UPNTransform, batch_images, resized_size
from chatrex.utils.image import load_image
from tests.conftest import SHARED

FIXTURE = SHARED / "fixtures" / "upn_small" / "upn_small_outputs.npz"


@pytest.mark.parametrize(
    "wh, expected_hw",
    [
        ((2246, 1590), (800, 1130)),  # the reference's example (truncation of 1130.06)
        ((1590, 2246), (1130, 800)),  # portrait
        ((640, 480), (800, 1066)),  # 1066.67 truncated, not rounded
        ((800, 800), (800, 800)),  # short side already 800: unchanged
        ((1000, 800), (800, 1000)),  # short side already 800: unchanged
        ((300, 300), (800, 800)),  # upscaling
        ((3000, 1000), (444, 1332)),  # max_size: size = round(1333*1000/3000) = 444, long = int(444*3)
        ((1000, 3000), (1332, 444)),
    ],
)
def test_resized_size_official_rule(wh, expected_hw):
    assert resized_size(*wh) == expected_hw


def test_resized_size_without_max_size_and_bad_input():
    assert resized_size(3000, 1000, 800, None) == (800, 2400)
    with pytest.raises(ValueError, match="positive"):
        resized_size(0, 10)
    with pytest.raises(ValueError, match="max_size"):
        resized_size(10, 10, 800, 0)


def test_transform_matches_reference_fixture():
    ref = np.load(FIXTURE)
    image = load_image(SHARED / "images" / "test_upn.jpeg")
    images, mask = batch_images([UPNTransform()(image)])
    assert tuple(images.shape) == ref["input_tensors"].shape
    diff = np.abs(images.numpy() - ref["input_tensors"]).max()
    assert diff <= 1e-6, f"max abs diff {diff}"
    assert np.array_equal(mask.numpy(), ref["input_mask"])


def test_transform_normalises_constant_image():
    image = Image.new("RGB", (40, 20), (255, 0, 128))
    t = UPNTransform(size=10, max_size=None)(image)
    assert t.shape == (3, 10, 20)
    assert t.dtype == torch.float32
    expected = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    for c in range(3):
        assert torch.allclose(t[c], torch.full_like(t[c], expected[c]), atol=1e-6)


def test_transform_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        UPNTransform()(Image.new("L", (8, 8)))
    with pytest.raises(TypeError, match="PIL"):
        UPNTransform()(np.zeros((8, 8, 3), np.uint8))


def test_batch_images_pads_bottom_right_and_masks():
    a = torch.full((3, 4, 6), 2.0)
    b = torch.full((3, 5, 3), -1.0)
    images, mask = batch_images([a, b])
    assert images.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6) and mask.dtype == torch.bool
    assert torch.equal(images[0, :, :4, :6], a) and (images[0, :, 4:] == 0).all()
    assert torch.equal(images[1, :, :5, :3], b) and (images[1, :, :, 3:] == 0).all()
    assert not mask[0, :4, :6].any() and mask[0, 4:].all()
    assert not mask[1, :5, :3].any() and mask[1, :, 3:].all()


def test_batch_images_errors():
    with pytest.raises(ValueError, match="at least one"):
        batch_images([])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        batch_images([torch.zeros(4, 4)])
    with pytest.raises(ValueError, match="channel"):
        batch_images([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])


def test_size_batches_keep_padding_low_and_respect_the_batch_limit():
    from chatrex.upn.transforms import size_batches

    sizes = [(512, 896), (896, 512), (512, 880), (880, 512), (512, 512)]
    groups = size_batches(sizes)
    assert sorted(i for g in groups for i in g) == list(range(5))  # every image once
    for g in groups:
        h, w = max(sizes[i][0] for i in g), max(sizes[i][1] for i in g)
        assert h * w * len(g) <= 1.25 * sum(sizes[i][0] * sizes[i][1] for i in g)
    together = {frozenset(g) for g in groups}
    assert any({0, 2} <= g and not g & {1, 3} for g in together)  # landscapes together, portraits apart
    assert any({1, 3} <= g for g in together)
    assert size_batches([(64, 64)] * 5, max_batch=2) == [[0, 1], [2, 3], [4]]
    assert [sorted(g) for g in size_batches([(64, 64), (64, 128)], max_padding=10.0)] == [[0, 1]]
    with pytest.raises(ValueError, match="max_batch"):
        size_batches([(1, 1)], max_batch=0)
