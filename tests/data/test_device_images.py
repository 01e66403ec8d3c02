import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from chatrex.data.device_images import EncodedImageError, decode_images, is_jpeg, read_encoded, resize_into_canvas
from chatrex.data.upn_dataset import UPNDataConfig, UPNDataset, collate_upn, device_batch
from chatrex.data.seeded_index import SeededIndex
from chatrex.upn.transforms import IMAGENET_MEAN, IMAGENET_STD, UPNTransform, batch_images


def _scene(w=120, h=80, seed=0):
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    d.rectangle([10, 8, 60, 50], fill=(220, 30, 30))
    d.ellipse([70, 20, 110, 70], fill=(20, 200, 60))
    return im


def _records(tmp_path, sizes, fmt="jpg"):
    (tmp_path / "images").mkdir(exist_ok=True)
    lines = []
    for i, (w, h) in enumerate(sizes):
        name = f"images/{i}.{fmt}"
        _scene(w, h, i).save(tmp_path / name, quality=95)
        lines.append({"id": str(i), "image": name, "width": w, "height": h,
                      "regions": [{"id": 0, "box": [10, 8, 60, 50], "category": "block", "level": "instance"},
                                  {"id": 1, "box": [12, 10, 30, 24], "category": "patch", "level": "part", "parent": 0}]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_decode_matches_pil(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    _scene().save(path, quality=90)
    encoded = read_encoded(path)
    assert is_jpeg(encoded) == (fmt == "jpg")
    [decoded] = decode_images([encoded], "cpu")
    ref = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert decoded.dtype == torch.uint8 and decoded.shape == ref.shape
    assert (decoded.int() - ref.int()).abs().max() <= 2


def test_decode_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xffnot really a jpeg")
    with pytest.raises(EncodedImageError, match="image 0"):
        decode_images([read_encoded(bad)], "cpu")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(EncodedImageError, match="empty"):
        read_encoded(tmp_path / "empty.jpg")
    with pytest.raises(EncodedImageError, match="cannot read"):
        read_encoded(tmp_path / "missing.jpg")


def test_resize_into_canvas_matches_the_cpu_transform(tmp_path):
    path = tmp_path / "a.png"
    image = _scene(120, 80)
    image.save(path)
    ref = UPNTransform(size=64, max_size=200)(image)  # (3, 64, 96), PIL bilinear + antialias
    [decoded] = decode_images([read_encoded(path)], "cpu")
    pixels, mask = resize_into_canvas([decoded, decoded], [(64, 96), (64, 96)], (96, 128), IMAGENET_MEAN,
                                      IMAGENET_STD, flips=[False, True])
    assert pixels.shape == (2, 3, 96, 128) and mask.shape == (2, 96, 128)
    assert not mask[:, :64, :96].any() and mask[:, 64:, :].all() and mask[:, :, 96:].all()
    assert (pixels[:, :, 64:] == 0).all() and (pixels[:, :, :, 96:] == 0).all()
    # PIL rounds to uint8 after resizing and its antialiasing filter differs slightly at edges
    diff = (pixels[0, :, :64, :96] - ref).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.35
    torch.testing.assert_close(pixels[1, :, :64, :96], pixels[0, :, :64, :96].flip(-1))
    with pytest.raises(ValueError, match="does not fit"):
        resize_into_canvas([decoded], [(100, 96)], (96, 128), IMAGENET_MEAN, IMAGENET_STD)


def test_upn_dataset_decodes_on_device_like_the_cpu_path(tmp_path):
    path = _records(tmp_path, [(120, 80), (80, 120), (100, 100)], fmt="png")
    common = dict(files=[str(path)], scales=[64], max_size=200)
    cpu = UPNDataset(UPNDataConfig(flip=0.0, **common))
    dev = UPNDataset(UPNDataConfig(flip=0.0, decode_on_device=True, **common))
    keys = [SeededIndex(i, 10 + i) for i in range(3)]
    cpu_batch = collate_upn([cpu[k] for k in keys])
    dev_batch = collate_upn([dev[k] for k in keys], scales=[64], max_size=200)
    assert dev_batch["sizes"] == [(64, 96), (96, 64), (64, 64)] and dev_batch["canvas"] == (96, 96)
    images, mask = device_batch(dev_batch, torch.device("cpu"))
    ref_images, ref_mask = cpu_batch["images"], cpu_batch["mask"]
    assert images.shape == ref_images.shape and torch.equal(mask, ref_mask)
    assert (images - ref_images).abs().mean() < 0.02
    for g in ("fine", "coarse"):
        for a, b in zip(dev_batch["targets"][g], cpu_batch["targets"][g]):
            torch.testing.assert_close(a, b)


def test_upn_device_batch_scale_and_flip(tmp_path):
    path = _records(tmp_path, [(120, 80)] * 4)
    ds = UPNDataset(UPNDataConfig(files=[str(path)], scales=[64, 96], max_size=400, flip=1.0, decode_on_device=True))
    items = [ds[SeededIndex(i, i)] for i in range(4)]
    assert all(it["flip"] for it in items)
    # the box [10, 8, 60, 50] of a 120 px wide image, mirrored: cx = 1 - 35 / 120
    assert items[0]["boxes"]["coarse"][0, 0].item() == pytest.approx(1 - 35 / 120)
    batch = collate_upn(items, scales=[64, 96], max_size=400)
    assert len({s for s in batch["sizes"]}) == 1 and batch["sizes"][0][0] in (64, 96)  # one scale per batch
    assert batch == collate_upn(items, scales=[64, 96], max_size=400) | {"encoded": batch["encoded"]}
    images, mask = device_batch(batch, torch.device("cpu"))
    h, w = batch["sizes"][0]
    # the flipped image: its red block (left in the file) is now on the right
    red = images[0, 0, :h, :w] > 1.0
    cols = red.float().mean(0)
    assert cols[w // 2:].sum() > cols[: w // 2].sum()
