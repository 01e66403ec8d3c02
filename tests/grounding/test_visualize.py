"""draw_grounded: grounded boxes in one colour per phrase, other boxes thin and grey."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chatrex.grounding import draw_grounded, parse_grounded, phrase_colors
from chatrex.grounding.visualize import UNGROUNDED_COLOR

BOXES = [[10, 10, 50, 50], [60, 10, 100, 50], [10, 60, 50, 100], [60, 60, 100, 100]]


def _blank():
    return Image.new("RGB", (120, 120), (0, 0, 0))


def test_phrase_colors_one_per_distinct_phrase():
    ans = parse_grounded(
        "<ground>dog</ground><objects><obj0></objects> <ground>Dog</ground><objects><obj1></objects> "
        "<ground>cat</ground><objects><obj2></objects>"
    )
    colors = phrase_colors(ans)
    assert colors["dog"] == colors["Dog"] != colors["cat"]


def test_draw_grounded_colours_and_grey_boxes():
    ans = parse_grounded(
        "<ground>dog</ground><objects><obj0><obj1></objects> and <ground>cat</ground><objects><obj2></objects>",
        num_boxes=4,
    )
    colors = phrase_colors(ans)
    img = draw_grounded(_blank(), ans, np.array(BOXES, dtype=float), width=2, font_size=8)
    px = np.asarray(img)
    assert img.size == (120, 120)
    # bottom edges are never covered by a label tag
    assert tuple(px[49, 30]) == colors["dog"]
    assert tuple(px[49, 80]) == colors["dog"]
    assert tuple(px[99, 30]) == colors["cat"]
    assert tuple(px[100, 80]) == UNGROUNDED_COLOR  # box 3 is not grounded: grey
    hidden = draw_grounded(_blank(), ans, BOXES, show_ungrounded=False, width=2, font_size=8)
    assert tuple(np.asarray(hidden)[100, 80]) == (0, 0, 0)


def test_draw_grounded_leaves_input_untouched_and_handles_empty():
    img = _blank()
    out = draw_grounded(img, parse_grounded("no groundings here"), [], show_ungrounded=True)
    assert np.asarray(img).max() == 0 and np.asarray(out).max() == 0 and out is not img


def test_draw_grounded_bad_input():
    ans = parse_grounded("<ground>dog</ground><objects><obj5></objects>")
    with pytest.raises(ValueError, match="only 4 boxes"):
        draw_grounded(_blank(), ans, BOXES)
    with pytest.raises(ValueError, match="expected 4"):
        draw_grounded(_blank(), parse_grounded("x"), [[1, 2, 3]])
    with pytest.raises(ValueError, match="non-finite"):
        draw_grounded(_blank(), parse_grounded("x"), [[1, 2, 3, float("nan")]])


def test_draw_on_real_image(shared_dir):
    path = sorted((shared_dir / "images").iterdir())[0]
    from chatrex.utils.image import load_image

    image = load_image(path)
    w, h = image.size
    boxes = [[0.1 * w, 0.1 * h, 0.5 * w, 0.5 * h], [0.4 * w, 0.4 * h, 0.9 * w, 0.9 * h]]
    ans = parse_grounded(
        "<ground>A rather long region description that will have to be shortened for the label</ground>"
        "<objects><obj0><obj1></objects>",
        num_boxes=2,
    )
    out = draw_grounded(image, ans, boxes)
    assert out.size == image.size and out.mode == "RGB"
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(image, dtype=int)).sum() > 0


def test_draw_grounded_fills_mask_regions_in_their_colour():
    from chatrex.utils.masks import encode_rle

    img = Image.new("RGB", (60, 40), (0, 0, 0))
    m = np.zeros((40, 60), dtype=bool)
    m[20:30, 30:50] = True
    left = np.zeros((40, 60), dtype=bool)
    left[:, :20] = True
    answer = parse_grounded("<ground>dog</ground><objects><obj1></objects>", num_boxes=3)
    out = np.asarray(draw_grounded(img, answer, [[1, 1, 10, 10], [30, 20, 50, 30], [0, 0, 20, 40]],
                                   masks=[None, encode_rle(m), left]))
    colour = np.asarray(phrase_colors(answer)["dog"], dtype=float)
    inside = out[25, 40].astype(float)
    np.testing.assert_allclose(inside, np.round(0.45 * colour), atol=1)  # filled at 45 % over black
    np.testing.assert_allclose(out[35, 10], np.round(0.45 * np.asarray(UNGROUNDED_COLOR)), atol=1)  # grey
    bare = np.asarray(draw_grounded(img, answer, [[1, 1, 10, 10], [30, 20, 50, 30], [0, 0, 20, 40]],
                                    masks=[None, m, left], show_ungrounded=False))
    assert not bare[35, 10].any() and bare[25, 40].any()
    with pytest.raises(ValueError, match="mask entries"):
        draw_grounded(img, answer, [[1, 1, 10, 10], [30, 20, 50, 30], [0, 0, 5, 5]], masks=[None])
