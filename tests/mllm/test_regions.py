"""Mask regions: decoding (binary, polygons, COCO RLE), clean errors, area resizing, and the processor's
``regions=`` input."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image

from chatrex.mllm.image_processing import square_frame
from chatrex.mllm.regions import prepare_regions, quantize_mask_grid
from chatrex.utils.masks import (
    MaskError,
    decode_mask,
    encode_rle,
    is_box,
    is_mask,
    mask_bbox,
    mask_to_grid,
    rle_counts,
    rle_from_crop,
)
from tests.mllm.conftest import random_image

H, W = 30, 40


def _mask() -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[5:12, 8:20] = True
    m[20:26, 30:33] = True  # two pieces
    return m


def test_binary_masks_of_every_dtype_decode_to_bool():
    m = _mask()
    for value in (m, m.astype(np.uint8), m.astype(np.uint8) * 255, m.astype(np.float32), torch.from_numpy(m),
                  Image.fromarray(m.astype(np.uint8) * 255)):
        out = decode_mask(value, H, W)
        assert out.dtype == bool and (out == m).all()


def test_rle_compressed_and_uncompressed_decode_like_pycocotools():
    m = _mask()
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    assert rle["counts"] == ref["counts"].decode()
    assert (decode_mask(rle, H, W) == m).all()
    assert (decode_mask({"size": [H, W], "counts": rle["counts"].encode()}, H, W) == m).all()  # bytes
    counts = rle_counts(rle["counts"])
    assert sum(counts) == H * W and sum(counts[1::2]) == m.sum()
    assert (decode_mask({"size": [H, W], "counts": counts}, H, W) == m).all()


def test_rle_string_parser_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 50, 2)
        m = rng.random((h, w)) < rng.random()
        counts = rle_counts(encode_rle(m)["counts"])
        flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
        assert (flat.reshape(w, h).T == m).all()


def test_rle_of_a_crop_equals_rle_of_the_whole_mask():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = rng.integers(1, 30, 2)
        ch, cw = rng.integers(1, h + 1), rng.integers(1, w + 1)
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = rng.random((ch, cw)) < rng.random()
        full = np.zeros((h, w), dtype=bool)
        full[y0:y0 + ch, x0:x0 + cw] = crop
        assert rle_from_crop(crop, int(x0), int(y0), int(h), int(w)) == encode_rle(full)
    with pytest.raises(MaskError, match="does not lie inside"):
        rle_from_crop(np.ones((4, 4), bool), 38, 0, H, W)


def test_polygons_decode_through_pycocotools():
    square = [[10, 5, 30, 5, 30, 15, 10, 15]]
    out = decode_mask(square, H, W)
    want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(square, H, W))).astype(bool)
    assert (out == want).all() and out[8, 20] and not out[20, 20]
    two = decode_mask(square + [[0, 20, 5, 20, 5, 25]], H, W)
    assert two.sum() > out.sum()


@pytest.mark.parametrize("region, message", [
    (np.zeros((H, W), bool), "empty"),
    (np.ones((H, W + 1), bool), "30x41 .* image is 30x40"),
    (np.full((H, W), 0.5), "not binary"),
    (np.arange(H * W).reshape(H, W) % 3, "not binary"),
    (np.ones((H, W, 3), bool), "2-D"),
    ({"size": [H, W], "counts": "zz"}, "alphabet"),
    ({"size": [H, W], "counts": [10, 5]}, "add up to 15 pixels"),
    ({"size": [H, W], "counts": [H * W]}, "empty"),
    ({"size": [H, W], "counts": [-1, H * W + 1]}, "non-negative"),
    ({"size": [H, W - 1], "counts": [0, H * (W - 1)]}, "RLE mask is 30x39"),
    ({"size": [H], "counts": "0"}, "size"),
    ({"counts": "PP"}, "no 'size'"),
    ({"size": [H, W], "counts": 7}, "string or a list"),
    ({"size": [H, W], "counts": "1P"}, "middle of a count"),
    ([[1, 2, 3, 4]], "at least 6"),
    ([[1, 2, 3, 4, 5]], "even number"),
    ([[1, 2, "a", 4, 5, 6]], "numbers only"),
    ([[100, 100, 120, 100, 120, 120]], "empty .*inside the image"),
    ([1, 2, 3, 4, 5, 6], "flat list of numbers is not a mask"),
])
def test_bad_masks_fail_with_a_clear_error(region, message):
    with pytest.raises(MaskError, match=message):
        decode_mask(region, H, W)


def test_kinds_and_bbox():
    assert is_box([1, 2, 3, 4]) and is_box(np.array([1.0, 2, 3, 4])) and not is_box([[1, 2, 3, 4]])
    assert is_mask(_mask()) and is_mask({"size": [1, 1], "counts": "1"}) and is_mask([[0, 0, 1, 0, 1, 1]])
    assert not is_mask([1, 2, 3, 4])
    assert mask_bbox(_mask()) == [8, 5, 33, 26]


def test_mask_to_grid_is_an_exact_area_resize():
    m = np.zeros((8, 12), dtype=bool)
    m[0:4, 0:6] = True  # the top-left quarter
    grid = mask_to_grid(m, 3)  # a 12-px square of 3 cells: 4 px each; the image sits at the top
    np.testing.assert_allclose(grid, [[1, 0.5, 0], [0, 0, 0], [0, 0, 0]])
    frame = square_frame(12, 8)  # centred: offset 2 rows
    grid = mask_to_grid(m, 3, frame.offset_x, frame.offset_y, frame.side)
    np.testing.assert_allclose(grid, [[0.5, 0.25, 0], [0.5, 0.25, 0], [0, 0, 0]])
    rng = np.random.default_rng(2)
    big = rng.random((37, 53)) < 0.3  # the grid keeps the mask's area at any scale
    for size in (5, 16, 64):
        g = mask_to_grid(big, size, 0, 8, 53)
        assert g.min() >= 0 and g.max() <= 1
        assert g.sum() * (53 / size) ** 2 == pytest.approx(big.sum(), rel=1e-4)


def test_prepare_regions_mixes_boxes_and_masks_in_order():
    frame = square_frame(W, H)
    m = _mask()
    out = prepare_regions([[0, 0, 10, 10], m, encode_rle(m), [5, 5, 40, 30]], frame, grid=10)
    assert out.boxes.shape == (4, 4) and out.masks.shape == (2, 10, 10)
    assert out.mask_indices.tolist() == [1, 2]
    assert out.pixel_boxes[1] == out.pixel_boxes[2] == [8.0, 5.0, 33.0, 26.0]
    torch.testing.assert_close(out.masks[0], out.masks[1])
    empty = prepare_regions(None, frame, grid=10)
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 10, 10)
    with pytest.raises(MaskError, match="image: region 1: the mask is empty"):
        prepare_regions([[0, 0, 5, 5], np.zeros((H, W))], frame, grid=10)
    q = quantize_mask_grid(torch.tensor([[[0.0, 0.001, 0.5, 1.0]]]))
    assert q.dtype == torch.uint8 and q.tolist() == [[[0, 1, 128, 255]]]


def test_processor_regions_with_only_boxes_equal_boxes(tiny_processor):
    img = random_image(0, W, H)
    boxes = [[1, 2, 20, 25], [0, 0, 40, 30]]
    a = tiny_processor([img], ["What is <obj0>?"], boxes=[boxes])
    b = tiny_processor([img], ["What is <obj0>?"], regions=[boxes])
    assert set(a) == set(b) and "region_masks" not in b
    for key in a:
        if isinstance(a[key], list):
            for x, y in zip(a[key], b[key]):
                torch.testing.assert_close(x, y)
        else:
            torch.testing.assert_close(a[key], b[key])


def test_processor_regions_with_masks(tiny_processor):
    img = random_image(0, W, H)
    m = _mask()
    out = tiny_processor([img, img], ["What is <obj1>?", "What is <obj0>?"],
                         regions=[[[1, 2, 20, 25], encode_rle(m)], None])
    grid = tiny_processor.mask_size
    assert grid == 128 // 4
    assert [t.shape for t in out["region_masks"]] == [(1, grid, grid), (0, grid, grid)]
    assert out["region_mask_indices"][0].tolist() == [1] and out["region_mask_indices"][1].numel() == 0
    frame = square_frame(W, H)
    want = torch.tensor([[8 + frame.offset_x, 5 + frame.offset_y, 33 + frame.offset_x, 26 + frame.offset_y]]) / frame.side
    torch.testing.assert_close(out["boxes"][0][1:], want.float())
    # the grid holds the mask's area (in cells of side / grid pixels)
    assert float(out["region_masks"][0].sum()) * (frame.side / grid) ** 2 == pytest.approx(float(m.sum()), rel=1e-4)
    single = tiny_processor.process(image=img, question="What is <obj1>?", regions=[[1, 2, 20, 25], m])
    torch.testing.assert_close(single["region_masks"][0], out["region_masks"][0])
    with pytest.raises(ValueError, match="not both"):
        tiny_processor([img], ["q"], boxes=[[[1, 2, 3, 4]]], regions=[[m]])
    with pytest.raises(MaskError, match="image 0: region 0: the mask is 31x40"):
        tiny_processor([img], ["q"], regions=[[np.ones((H + 1, W), bool)]])


def test_processor_topk_keeps_the_masks_of_kept_regions(tiny_tokenizer):
    from tests.mllm.conftest import make_processor

    proc = make_processor(tiny_tokenizer, max_boxes=2, max_boxes_policy="topk")
    img = random_image(0, W, H)
    m = _mask()
    out = proc([img], ["q"], regions=[[m, [0, 0, 5, 5], m]], scores=[[0.9, 0.1, 0.8]])
    assert out["boxes"][0].shape == (2, 4)
    assert out["region_mask_indices"][0].tolist() == [0, 1]  # regions 0 and 2 kept, both masks
