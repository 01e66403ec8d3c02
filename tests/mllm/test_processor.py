import numpy as np
import pytest
import torch
from PIL import Image

from chatrex.mllm.image_processing import denormalize_boxes, normalize_boxes, square_frame
from chatrex.mllm.processing_chatrex import ChatRexProcessor, select_boxes
from chatrex.utils.image import ImageLoadError
from tests.mllm.conftest import make_processor, random_image


def _ids(tok, t):
    return tok.convert_tokens_to_ids(t)


def test_single_image_layout_and_shapes(tiny_processor, tiny_tokenizer):
    out = tiny_processor.process(image=random_image(0, 80, 40), question="What is <obj1>?",
                                 bbox=[[0, 0, 10, 10], [20, 5, 60, 35], [70, 30, 80, 40]])
    assert out["pixel_values"].shape == (1, 3, 56, 56)
    assert out["pixel_values_aux"].shape == (1, 3, 128, 128)
    ids = out["input_ids"][0].tolist()
    assert ids.count(_ids(tiny_tokenizer, "<image>")) == 16
    assert ids.count(_ids(tiny_tokenizer, "<objfeat>")) == 3
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n" + "<image>" * 16 + "\n<obj0><objfeat><obj1><objfeat><obj2><objfeat>\n")
    assert text.endswith("What is <obj1>?<|im_end|>\n<|im_start|>assistant\n")
    assert out["attention_mask"].all()
    assert "labels" not in out


def test_boxes_follow_centred_padding():
    frame = square_frame(200, 100)  # padded to 200 x 200, image placed 50 px down
    b = normalize_boxes([[0, 0, 200, 100], [10, 20, 30, 40]], frame)
    torch.testing.assert_close(b, torch.tensor([[0.0, 0.25, 1.0, 0.75], [0.05, 0.35, 0.15, 0.45]]))
    clipped = normalize_boxes([[-10, -10, 50, 300]], frame)  # clipped to the image first
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.25, 0.25, 0.75]]))
    back = denormalize_boxes(b, frame)
    torch.testing.assert_close(back, torch.tensor([[0.0, 0, 200, 100], [10, 20, 30, 40]]))


def test_padding_colour_is_the_clip_mean(tiny_processor):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    square, frame = tiny_processor.image_processor.pad_to_square(img)
    assert (frame.offset_x, frame.offset_y, frame.side) == (0, 10, 40)
    arr = np.asarray(square)
    assert tuple(arr[0, 0]) == tiny_processor.image_processor.pad_color == (123, 117, 104)
    assert tuple(arr[20, 20]) == (0, 0, 0)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([[0, 0, float("nan"), 5]], "box 0 .*NaN"),
        ([[5, 5, 10, 10], [10, 0, 5, 5]], "box 1 .*x1 < x0"),
        ([[100, 100, 120, 120]], "box 0 .*zero area"),
        ([[0, 0, 5, 5, 1]], "shape"),
        ([[3, 3, 3, 9]], "box 0 .*zero area"),
    ],
)
def test_bad_boxes_give_clear_errors(tiny_processor, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_processor.process(image=random_image(0, 40, 30), question="q", bbox=bad)


def test_more_than_100_boxes_error_and_topk(tiny_tokenizer):
    boxes = [[i % 30, 0, i % 30 + 5, 5] for i in range(130)]
    proc = make_processor(tiny_tokenizer)
    with pytest.raises(ValueError, match="130 boxes but ChatRex takes at most 100"):
        proc.process(image=random_image(0, 40, 30), question="q", bbox=boxes)
    scores = [float(i % 7) + i / 1000 for i in range(130)]
    out = proc([random_image(0, 40, 30)], ["q"], [boxes], scores=[scores], max_boxes_policy="topk",
               return_frames=True)
    kept = out["kept_boxes"][0]
    assert len(kept) == 100 and kept == sorted(kept)
    assert min(scores[i] for i in kept) >= max(scores[i] for i in range(130) if i not in kept)
    assert out["boxes"][0].shape == (100, 4)
    assert out["input_ids"][0].tolist().count(proc.objfeat_token_id) == 100
    assert select_boxes(130, None, 100, "topk") == list(range(100))
    with pytest.raises(ValueError, match="scores"):
        select_boxes(3, [1.0], 100, "topk")


def test_labels_cover_only_the_answer_and_end_of_turn(tiny_processor, tiny_tokenizer):
    answer = "<ground>dog</ground><objects><obj1></objects>"
    out = tiny_processor([random_image(0, 40, 30), random_image(1, 30, 50)], ["Detect dog.", "What is it?"],
                         [[[0, 0, 10, 10], [5, 5, 20, 20]], None], answers=[answer, "a car"])
    labels, ids = out["labels"], out["input_ids"]
    assert labels.shape == ids.shape
    # training batches are right-padded
    assert out["attention_mask"][:, 0].all() and not out["attention_mask"][1, -1]
    for i, ans in enumerate([answer, "a car"]):
        sel = labels[i] != -100
        assert torch.equal(labels[i][sel], ids[i][sel])
        assert tiny_tokenizer.decode(labels[i][sel]) == ans + "<|im_end|>"
        # everything before the answer (prompt, image, objects) is masked
        first = int(sel.nonzero()[0])
        assert tiny_tokenizer.decode(ids[i][:first]).endswith("<|im_start|>assistant\n")
    assert (labels[ids == tiny_processor.image_token_id] == -100).all()


def test_left_padding_for_generation(tiny_processor):
    out = tiny_processor([random_image(0, 40, 30), random_image(1, 30, 50)], ["a long question about the image", "q"],
                         [[[0, 0, 10, 10]] * 3, []])
    mask = out["attention_mask"]
    assert mask[:, -1].all() and not mask[1, 0]
    assert [b.shape[0] for b in out["boxes"]] == [3, 0]
    right = tiny_processor([random_image(0, 40, 30), random_image(1, 30, 50)], ["a long question about the image", "q"],
                           padding_side="right")
    assert right["attention_mask"][:, 0].all()


def test_bad_images_and_mismatched_lengths(tiny_processor, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="broken.png"):
        tiny_processor.process(image=str(bad), question="q")
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        tiny_processor([random_image(0, 20, 20)] * 2, ["q"])


def test_save_and_load_round_trip(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    loaded = ChatRexProcessor.from_pretrained(tmp_path)
    assert loaded.num_image_tokens == 16 and loaded.image_processor.image_size_aux == 128
    a = tiny_processor.process(image=random_image(2, 50, 40), question="What is <obj0>?", bbox=[[1, 2, 30, 20]])
    b = loaded.process(image=random_image(2, 50, 40), question="What is <obj0>?", bbox=[[1, 2, 30, 20]])
    assert torch.equal(a["input_ids"], b["input_ids"])
    torch.testing.assert_close(a["pixel_values_aux"], b["pixel_values_aux"])
    torch.testing.assert_close(a["boxes"][0], b["boxes"][0])


def test_decode_keeps_chatrex_tokens_and_drops_others(tiny_processor, tiny_tokenizer):
    ids = tiny_tokenizer("<ground>dog</ground><objects><obj2></objects><|im_end|>", add_special_tokens=False)["input_ids"]
    assert tiny_processor.decode(ids) == "<ground>dog</ground><objects><obj2></objects>"


def test_uint8_pixels_normalised_later_equal_the_float_path(tiny_processor):
    import numpy as np
    import torch

    image = np.random.default_rng(0).integers(0, 256, size=(40, 70, 3), dtype=np.uint8)
    ref = tiny_processor([image], ["What is this?"], [[[1, 2, 30, 20]]])
    raw = tiny_processor([image], ["What is this?"], [[[1, 2, 30, 20]]], normalize_images=False)
    assert raw["pixel_values"].dtype == torch.uint8 and raw["pixel_values_aux"].dtype == torch.uint8
    ip = tiny_processor.image_processor
    torch.testing.assert_close(ip.normalize(raw["pixel_values"]), ref["pixel_values"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ip.normalize(raw["pixel_values_aux"], aux=True), ref["pixel_values_aux"], atol=1e-5, rtol=1e-5)
    assert torch.equal(raw["input_ids"], ref["input_ids"])
