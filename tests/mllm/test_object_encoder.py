import math

import numpy as np
import torch

from chatrex.mllm.object_encoder import box_sine_embedding, encode_objects, fuse_levels
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
