"""UPNWrapper on a tiny random UPN: input kinds, batching, EXIF, errors, filtering, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from chatrex.upn.config import resolve_config
from chatrex.upn.model import build_upn
from chatrex.upn.wrapper import UPNWrapper, resolve_device, resolve_prompt_type
from chatrex.utils.image import ImageLoadError

RESIZE, MAX_SIZE = 64, 96


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = resolve_config("upn_tiny")
    model = build_upn(cfg).eval()
    return model, cfg


@pytest.fixture(scope="module")
def upn(tiny):
    model, cfg = tiny
    return UPNWrapper.from_model(model, cfg, resize=RESIZE, max_size=MAX_SIZE)


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_batch_of_two_sizes(upn, tiny):
    q = tiny[1].num_queries
    out = upn.inference([_rgb(80, 60), _rgb(50, 90, 1)], prompt_type="fine_grained_prompt")
    assert set(out) == {"original_xyxy_boxes", "scores"}
    assert out["original_xyxy_boxes"].shape == (2, q, 4) and out["original_xyxy_boxes"].dtype == np.float32
    assert out["scores"].shape == (2, q) and out["scores"].dtype == np.float32
    assert np.all(np.diff(out["scores"], axis=1) <= 0), "scores must be sorted, highest first"
    assert np.all((out["scores"] >= 0) & (out["scores"] <= 1))


def test_single_image_matches_model_and_postprocess(upn, tiny):
    model, _ = tiny
    image = _rgb(70, 50, 2)
    out = upn.inference(image, prompt_type="coarse")
    pixels, mask, sizes = upn.preprocess([image])
    assert sizes == [(50, 70)] and not mask.any()
    with torch.no_grad():
        raw = model(pixels, mask, "coarse_grained_prompt")
    scores = raw["pred_logits"][0, :, 0].sigmoid()
    np.testing.assert_allclose(out["scores"][0], np.sort(scores.numpy())[::-1], rtol=1e-5, atol=1e-6)
    best = int(scores.argmax())
    cx, cy, w, h = raw["pred_boxes"][0, best].tolist()
    np.testing.assert_allclose(
        out["original_xyxy_boxes"][0, 0], [(cx - w / 2) * 70, (cy - h / 2) * 50, (cx + w / 2) * 70, (cy + h / 2) * 50],
        rtol=1e-4, atol=1e-3,
    )


def test_prompt_aliases_and_unknown_prompt(upn):
    image = _rgb(40, 40, 3)
    fine = upn.inference(image, "fine")
    np.testing.assert_array_equal(fine["scores"], upn.inference(image, "fine_grained_prompt")["scores"])
    coarse = upn.inference(image, "coarse")
    assert not np.array_equal(fine["scores"], coarse["scores"]), "the two prompts must give different scores"
    with pytest.raises(ValueError, match="prompt_type"):
        upn.inference(image, "medium")
    assert resolve_prompt_type("coarse") == "coarse_grained_prompt"


def test_input_kinds_grayscale_rgba_palette_array(upn, tmp_path):
    rgb = _rgb(48, 36, 4)
    gray_path = tmp_path / "gray.png"
    rgb.convert("L").save(gray_path)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba_path = tmp_path / "rgba.png"
    rgba.save(rgba_path)
    pal_path = tmp_path / "palette.png"
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(pal_path)
    inputs = [gray_path, str(rgba_path), Image.open(pal_path), np.asarray(rgb), rgb.convert("L")]
    out = upn.inference(inputs)
    assert out["scores"].shape[0] == len(inputs)
    assert np.isfinite(out["original_xyxy_boxes"]).all() and np.isfinite(out["scores"]).all()
    # an array and the PIL image it came from give the same answer
    np.testing.assert_array_equal(upn.inference(np.asarray(rgb))["scores"], upn.inference(rgb)["scores"])


def test_exif_rotated_image_gives_boxes_in_rotated_frame(upn, tmp_path):
    stored = _rgb(80, 40, 5)  # stored landscape 80x40
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display rotated 90 degrees clockwise -> 40x80 portrait
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    pixels, mask, sizes = upn.preprocess([path])
    assert sizes == [(80, 40)], "sizes must be those of the upright (EXIF-transposed) image"
    assert pixels.shape[-2:] == (96, 48)  # long side 128 > 96 -> short side round(96*40/80)=48
    out = upn.inference(path)
    # the displayed frame, built by hand from the decoded pixels (no EXIF left on it)
    with Image.open(path) as raw:
        upright = Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(raw), k=-1)))
    assert upright.size == (40, 80)
    ref = upn.inference(upright)
    np.testing.assert_allclose(out["original_xyxy_boxes"], ref["original_xyxy_boxes"], atol=1e-3)
    # the boxes of the un-rotated pixels differ (the frame is really rotated)
    plain = upn.inference(stored)
    assert not np.allclose(plain["scores"], out["scores"])


def test_bad_images_raise_image_load_error(upn, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageLoadError, match="corrupt.jpg"):
        upn.inference(corrupt)
    with pytest.raises(ImageLoadError, match="does not exist"):
        upn.inference(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError):
        upn.inference([_rgb(20, 20), tmp_path / "missing.png"])
    with pytest.raises(ImageLoadError, match="at least"):
        upn.inference(np.zeros((1, 50, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        upn.inference([])


def test_filter_empty_image_keeps_other_image(upn):
    out = upn.inference([_rgb(60, 40, 6), _rgb(40, 60, 7)])
    # a threshold between the two images' best scores removes everything from one image only
    best = out["scores"][:, 0]
    lo, hi = sorted(best.tolist())
    assert lo < hi
    kept = upn.filter(out, min_score=(lo + hi) / 2, nms_value=0.8)
    n = [len(b) for b in kept["original_xyxy_boxes"]]
    assert len(n) == 2 and sorted(n)[0] == 0 and sorted(n)[1] >= 1
    empty_idx = int(np.argmin(best))
    assert kept["scores"][empty_idx] == [] and len(kept["scores"][1 - empty_idx]) >= 1
    # propose = inference + filter
    assert upn.propose([_rgb(60, 40, 6), _rgb(40, 60, 7)], min_score=(lo + hi) / 2) == kept


def test_batch_size_chunks(tiny):
    model, cfg = tiny
    images = [_rgb(64, 48, 8), _rgb(64, 48, 9), _rgb(64, 48, 10)]  # same size: no padding differences
    whole = UPNWrapper.from_model(model, cfg, resize=RESIZE, max_size=MAX_SIZE).inference(images)
    chunked = UPNWrapper.from_model(model, cfg, resize=RESIZE, max_size=MAX_SIZE, batch_size=2).inference(images)
    assert chunked["scores"].shape == whole["scores"].shape
    np.testing.assert_allclose(chunked["scores"], whole["scores"], atol=1e-5)
    np.testing.assert_allclose(chunked["original_xyxy_boxes"], whole["original_xyxy_boxes"], atol=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        UPNWrapper.from_model(model, cfg, batch_size=0)


def test_from_model_restores_training_mode(tiny):
    model, cfg = tiny
    model.train()
    try:
        upn = UPNWrapper.from_model(model, cfg, resize=RESIZE, max_size=MAX_SIZE)
        a = upn.inference(_rgb(40, 40, 11))
        assert model.training, "inference must restore the caller's train mode"
        b = upn.inference(_rgb(40, 40, 11))
        np.testing.assert_array_equal(a["scores"], b["scores"])  # eval mode inside: deterministic
    finally:
        model.eval()
    with pytest.raises(TypeError, match="nn.Module"):
        UPNWrapper.from_model(object())


def test_checkpoint_directory_and_official_file(tiny, tmp_path):
    from chatrex.upn.checkpoint import save_pretrained

    model, cfg = tiny
    image = _rgb(50, 40, 12)
    ref = UPNWrapper.from_model(model, cfg, resize=RESIZE, max_size=MAX_SIZE).inference(image)

    save_pretrained(model, cfg, tmp_path / "tiny")
    from_dir = UPNWrapper(tmp_path / "tiny", resize=RESIZE, max_size=MAX_SIZE)
    np.testing.assert_allclose(from_dir.inference(image)["scores"], ref["scores"], atol=1e-6)
    with pytest.raises(ValueError, match="differs"):
        UPNWrapper(tmp_path / "tiny", config="upn_small")

    pth = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, pth)
    from_pth = UPNWrapper(pth, config="upn_tiny", resize=RESIZE, max_size=MAX_SIZE)
    np.testing.assert_allclose(from_pth.inference(image)["scores"], ref["scores"], atol=1e-6)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        UPNWrapper(tmp_path / "nope.pth", config="upn_tiny")
    with pytest.raises(Exception, match=r"(?i)checkpoint|key|size|shape"):
        UPNWrapper(pth, config="upn_small")  # the tiny weights do not fit the small model


def test_directory_input_size_comes_from_its_preprocessor_config(tiny, tmp_path):
    """A trained UPN records the input size it was trained for; the wrapper uses it unless told otherwise."""
    import json

    from chatrex.upn.checkpoint import save_pretrained

    model, cfg = tiny
    image = _rgb(50, 40, 13)
    save_pretrained(model, cfg, tmp_path / "plain")
    plain = UPNWrapper(tmp_path / "plain")  # no record: the official size
    assert (plain.transform.size, plain.transform.max_size) == (800, 1333)

    save_pretrained(model, cfg, tmp_path / "sized")
    (tmp_path / "sized" / "preprocessor_config.json").write_text(json.dumps({"resize": RESIZE, "max_size": MAX_SIZE}))
    sized = UPNWrapper(tmp_path / "sized")
    assert (sized.transform.size, sized.transform.max_size) == (RESIZE, MAX_SIZE)
    ref = UPNWrapper.from_model(model, cfg, resize=RESIZE, max_size=MAX_SIZE).inference(image)
    np.testing.assert_allclose(sized.inference(image)["scores"], ref["scores"], atol=1e-6)
    given = UPNWrapper(tmp_path / "sized", resize=72, max_size=None)  # explicit values win
    assert (given.transform.size, given.transform.max_size) == (72, None)

    for bad in ("{not json", json.dumps({"max_size": 96}), json.dumps({"resize": -5})):
        (tmp_path / "sized" / "preprocessor_config.json").write_text(bad)
        with pytest.raises(ValueError, match="preprocessor_config.json"):
            UPNWrapper(tmp_path / "sized")
    both = UPNWrapper(tmp_path / "sized", resize=RESIZE, max_size=MAX_SIZE)  # the record is not needed, nor read
    assert (both.transform.size, both.transform.max_size) == (RESIZE, MAX_SIZE)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_mixed_shapes_run_in_alike_batches_and_come_back_in_order(upn, tiny, monkeypatch):
    # portrait, landscape, portrait, landscape: two batches of alike shapes, answers in the input's order
    images = [_rgb(50, 90, 11), _rgb(90, 50, 12), _rgb(52, 92, 13), _rgb(92, 52, 14)]
    seen = []
    forward = upn._forward

    def spy(batch, prompt):
        seen.append([im.size for im in batch])
        return forward(batch, prompt)

    monkeypatch.setattr(upn, "_forward", spy)
    out = upn.inference(images)
    assert sorted(len(b) for b in seen) == [2, 2]
    assert all(len({w > h for w, h in b}) == 1 for b in seen)  # no batch mixes orientations
    monkeypatch.undo()
    for i, im in enumerate(images):  # each row is that image's own result
        alone = upn.inference(im)
        np.testing.assert_allclose(out["scores"][i], alone["scores"][0], atol=1e-5)
        np.testing.assert_allclose(out["original_xyxy_boxes"][i], alone["original_xyxy_boxes"][0], atol=1e-3)
