import math

import numpy as np
import pytest
import torch

from chatrex.mllm.object_encoder import box_sine_embedding, encode_objects, fuse_levels, mask_features, xyxy_box_embedding
from tests.conftest import SHARED


def _fixture():
    d = np.load(SHARED / "fixtures" / "object_encoder" / "object_encoder.npz")
    levels = [torch.from_numpy(d[f"feature_level{i}"]) for i in range(4)]
    return levels, torch.from_numpy(d["boxes_xyxy_768"]), torch.from_numpy(d["object_features"])


def test_reproduces_reference_object_features():
    levels, boxes_px, expected = _fixture()
    out = encode_objects(levels, [boxes_px / 768.0], input_size=768)
    assert out.shape == (7, 120)
    torch.testing.assert_close(out, expected[0], atol=1e-5, rtol=0)


def test_batched_boxes_match_per_image_and_allow_empty():
    torch.manual_seed(0)
    levels = [torch.randn(3, c, s, s) for c, s in zip((8, 16, 32, 64), (32, 16, 8, 4))]
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]), torch.zeros(0, 4),
             torch.tensor([[0.3, 0.2, 0.4, 0.9]])]
    out = encode_objects(levels, boxes, input_size=128)
    assert out.shape == (3, 120)
    single0 = encode_objects([l[:1] for l in levels], boxes[:1], input_size=128)
    single2 = encode_objects([l[2:] for l in levels], boxes[2:], input_size=128)
    torch.testing.assert_close(out[:2], single0)
    torch.testing.assert_close(out[2:], single2)
    empty = encode_objects([l[1:2] for l in levels], [torch.zeros(0, 4)], input_size=128)
    assert empty.shape == (0, 120)


def test_sine_embedding_layout_is_y_x_w_h_with_interleaved_sin_cos():
    box = torch.tensor([[0.25, 0.75, 0.1, 0.2]])  # cx, cy, w, h
    emb = box_sine_embedding(box, num_feats=6)
    assert emb.shape == (1, 24)
    dim_t = torch.tensor([10000 ** (2 * (k // 2) / 6) for k in range(6)])
    for block, value in enumerate((0.75, 0.25, 0.1, 0.2)):  # y, x, w, h
        pos = value * 2 * math.pi / dim_t
        want = torch.stack([pos[k].sin() if k % 2 == 0 else pos[k].cos() for k in range(6)])
        torch.testing.assert_close(emb[0, block * 6:(block + 1) * 6], want.float())


def test_fuse_levels_resizes_to_the_finest_level():
    levels = [torch.ones(1, 2, 8, 8), torch.full((1, 3, 4, 4), 2.0)]
    fused = fuse_levels(levels)
    assert fused.shape == (1, 5, 8, 8)
    assert torch.allclose(fused[:, 2:], torch.full((1, 3, 8, 8), 2.0))


def test_bfloat16_levels_work_and_keep_their_dtype():
    levels, boxes_px, expected = _fixture()
    out = encode_objects([l.bfloat16() for l in levels], [boxes_px / 768.0], input_size=768)
    assert out.dtype == torch.bfloat16 and out.shape == (7, 120)
    torch.testing.assert_close(out.float(), expected[0], atol=0.1, rtol=0.05)


# ------------------------------------------------------------------------------------------ mask regions
def _ramp_levels(batch: int = 1):
    """Hand-made levels: level 0 (8 x 8, 2 channels) holds the column index and 100 + the row index;
    level 1 (4 x 4, 1 channel) holds 10 x its column index."""
    col0 = torch.arange(8.0).expand(8, 8)
    level0 = torch.stack([col0, 100 + col0.T])[None].repeat(batch, 1, 1, 1)
    level1 = (10 * torch.arange(4.0).expand(4, 4))[None, None].repeat(batch, 1, 1, 1)
    return [level0, level1]


def test_mask_pooling_gives_the_known_average_of_each_level():
    levels = _ramp_levels()
    left = torch.zeros(1, 8, 8)
    left[0, :, :4] = 1  # columns 0..3 of the 8-cell grid: columns 0..1 of level 1
    out = mask_features(levels, [left])
    torch.testing.assert_close(out, torch.tensor([[1.5, 103.5, 5.0]]))
    corner = torch.zeros(1, 8, 8)
    corner[0, 2:4, 6:8] = 1  # rows 2..3, columns 6..7: one cell (row 1, column 3) of level 1
    torch.testing.assert_close(mask_features(levels, [corner]), torch.tensor([[6.5, 102.5, 30.0]]))
    soft = torch.zeros(1, 8, 8)
    soft[0, 0, 0], soft[0, 0, 4] = 1.0, 0.5  # partial coverage weighs in: (0 * 1 + 4 * 0.5) / 1.5
    torch.testing.assert_close(mask_features(levels, [soft])[0, 0], torch.tensor(4 / 3))
    # a coarser mask grid is spread over the finer level: 2 x 2 grid, left column -> level 0 columns 0..3
    coarse = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    torch.testing.assert_close(mask_features(levels, [coarse]), torch.tensor([[1.5, 103.5, 5.0]]))
    # uint8 weights (as training ships them) give the same averages
    torch.testing.assert_close(mask_features(levels, [(left * 255).to(torch.uint8)]), mask_features(levels, [left]))


def test_masks_replace_the_roi_features_of_their_boxes_only():
    torch.manual_seed(0)
    levels = [torch.randn(2, c, s, s) for c, s in zip((8, 16, 32, 64), (32, 16, 8, 4))]
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.2, 0.3, 0.9, 0.8]]), torch.tensor([[0.3, 0.2, 0.4, 0.9]])]
    masks = [torch.rand(1, 32, 32).round(), torch.zeros(0, 32, 32)]
    indices = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    plain = encode_objects(levels, boxes, input_size=128)
    mixed = encode_objects(levels, boxes, input_size=128, masks=masks, mask_indices=indices)
    torch.testing.assert_close(mixed[[0, 2]], plain[[0, 2]])
    assert not torch.allclose(mixed[1], plain[1])
    pooled = mask_features([l[:1] for l in levels], masks[:1])

    torch.testing.assert_close(mixed[1], pooled[0] + xyxy_box_embedding(boxes[0][1:], 30)[0])


def test_batched_masks_and_boxes_equal_per_image_calls():
    torch.manual_seed(1)
    levels = [torch.randn(3, c, s, s) for c, s in zip((8, 16, 32, 64), (32, 16, 8, 4))]
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.7, 0.9]]),
             torch.zeros(0, 4), torch.tensor([[0.3, 0.2, 0.4, 0.9], [0.1, 0.6, 0.3, 0.8]])]
    masks = [(torch.rand(2, 32, 32) > 0.5).float(), torch.zeros(0, 32, 32), torch.rand(1, 32, 32)]
    indices = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    out = encode_objects(levels, boxes, input_size=128, masks=masks, mask_indices=indices)
    assert out.shape == (5, 120)
    rows = 0
    for i in range(3):
        single = encode_objects([l[i:i + 1] for l in levels], boxes[i:i + 1], input_size=128,
                                masks=masks[i:i + 1], mask_indices=indices[i:i + 1])
        torch.testing.assert_close(out[rows:rows + len(single)], single, atol=1e-5, rtol=1e-5)
        rows += len(single)


@pytest.mark.parametrize("masks, indices, message", [
    ([torch.ones(1, 8, 8)], [torch.tensor([3])], "outside the image's 2 boxes"),
    ([torch.ones(2, 8, 8)], [torch.tensor([1, 1])], "names a box twice"),
    ([torch.ones(1, 8, 8)], [torch.tensor([0.0])], "integer tensor"),
    ([torch.ones(1, 8, 4)], [torch.tensor([0])], r"\(M, G, G\)"),
    ([torch.ones(1, 8, 8), torch.ones(1, 8, 8)], [torch.tensor([0])], "list of 1 tensors"),
])
def test_bad_mask_inputs_are_named(masks, indices, message):
    levels = [torch.randn(1, c, s, s) for c, s in zip((8, 16, 32, 64), (32, 16, 8, 4))]
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.2, 0.2, 0.4, 0.4]])]
    with pytest.raises(ValueError, match=message):
        encode_objects(levels, boxes, input_size=128, masks=masks, mask_indices=indices)
    with pytest.raises(ValueError, match="both"):
        encode_objects(levels, boxes, input_size=128, masks=masks)


def _linear_levels(seed: int = 0):
    """Four levels (strides 4..32 of a 128-px input) whose every channel varies linearly in x and y."""
    g = torch.Generator().manual_seed(seed)
    levels = []
    for c, s in zip((8, 16, 32, 64), (32, 16, 8, 4)):
        centre = (torch.arange(s, dtype=torch.float32) + 0.5) * (128 / s)  # cell centres in pixels
        yy, xx = torch.meshgrid(centre, centre, indexing="ij")
        a, b, k = (torch.randn(c, 1, 1, generator=g) for _ in range(3))
        levels.append((a * xx / 128 + b * yy / 128 + k)[None])
    return levels


def _rectangle(box_px, grid=32, size=128):
    m = torch.zeros(1, grid, grid)
    x0, y0, x1, y1 = (int(v * grid / size) for v in box_px)
    m[0, y0:y1, x0:x1] = 1
    return m


def test_a_rectangle_mask_and_its_box_agree_when_roi_align_is_aligned():
    """On features linear in space, a box on the coarsest level's grid and its filled rectangle give the
    same object feature with ``aligned=True``; the official ``aligned=False`` reads the box half a stride-4
    cell up-left, which on a ramp shows as a difference."""
    levels = _linear_levels()
    box_px = [32, 32, 96, 64]
    boxes = [torch.tensor([box_px], dtype=torch.float32) / 128]
    mask = _rectangle(box_px)
    kwargs = dict(input_size=128, masks=[mask], mask_indices=[torch.tensor([0])])
    box_aligned = encode_objects(levels, boxes, input_size=128, aligned=True)
    mask_aligned = encode_objects(levels, boxes, aligned=True, **kwargs)
    torch.testing.assert_close(mask_aligned, box_aligned, atol=1e-4, rtol=1e-4)
    box_official = encode_objects(levels, boxes, input_size=128, aligned=False)
    assert (box_official - mask_aligned).abs().max() > 1e-2
    # on random features they stay close, not equal (bilinear sampling vs area pooling at the edges)
    torch.manual_seed(0)
    rand = [torch.randn(1, c, s, s) for c, s in zip((8, 16, 32, 64), (32, 16, 8, 4))]
    a = encode_objects(rand, boxes, input_size=128, aligned=True, box_embedding=False)
    b = encode_objects(rand, boxes, aligned=True, box_embedding=False, **{**kwargs, "input_size": 128})
    assert torch.nn.functional.cosine_similarity(a, b).item() > 0.9
