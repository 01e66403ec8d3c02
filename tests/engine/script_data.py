"""A hand-written script for the five shared test photos: what stand-in models "say" about each.

Boxes are fractions of the image size (converted to pixels by :func:`build_script`), so the script
does not depend on the photos' resolutions.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.conftest import SHARED

IMAGES = SHARED / "images"

# name -> (caption, [(phrase as it appears in the caption, span start, [fx0, fy0, fx1, fy1], score, description)])
SCRIPT_FRACTIONS = {
    "test_chatrex_detection.jpg": (
        "White pigeons walk on the sand near a fountain with palm trees and a city skyline.",
        [
            ("White pigeons", [0.20, 0.62, 0.36, 0.78], 0.91, "A white pigeon is walking on the sand near the fountain."),
            ("White pigeons", [0.70, 0.80, 0.82, 0.98], 0.85, "A white pigeon standing in the sunlit sand."),
            ("fountain", [0.28, 0.40, 0.98, 0.62], 0.88, "A round fountain is spraying water in a sunny park."),
            ("palm trees", [0.55, 0.00, 0.80, 0.40], 0.40, "Tall trunks rise above the plaza."),
            ("city skyline", [0.00, 0.02, 0.45, 0.25], 0.77, "In this image, the city skyline is visible across the water behind the park."),
        ],
    ),
    "test_chatrex_grounded_caption.jpg": (
        "A plaid couch faces a small television on a wooden stand beside a red armchair.",
        [
            ("plaid couch", [0.52, 0.53, 1.00, 1.00], 0.95, "A blue and red plaid couch is placed in front of the television."),
            ("small television", [0.69, 0.29, 0.78, 0.43], 0.90, "A small old television sits on a wooden cabinet."),
            ("wooden stand", [0.66, 0.42, 0.81, 0.62], 0.62, "A wooden stand holding a television against the wall."),
            ("red armchair", [0.29, 0.39, 0.46, 0.86], 0.93, "The armchair is red."),
        ],
    ),
    "test_chatrex_install.jpg": (
        "Two dogs sleep on a bed next to a book.",
        [
            ("Two dogs", [0.15, 0.10, 0.42, 0.45], 0.89, "A brown dog is curled up asleep on the pillow."),
            ("Two dogs", [0.29, 0.34, 0.81, 0.99], 0.94, "A tan dog lying on its side across the bed, sleeping."),
            ("bed", [0.00, 0.05, 1.00, 1.00], 0.83, "I am not sure what this is."),
            ("book", [0.01, 0.52, 0.14, 0.76], 0.71, "A paperback book lies on the blanket near the dogs."),
        ],
    ),
    "test_grounded_conversation.jpg": (
        "A snowman toy sits beside black sneakers, a dumbbell and a book.",
        [
            ("snowman toy", [0.57, 0.00, 0.97, 0.58], 0.97, "A plush snowman toy with a red hat and a blue scarf."),
            ("black sneakers", [0.31, 0.33, 0.52, 0.62], 0.92, "A pair of black sneakers is placed on the gray carpet."),
            ("dumbbell", [0.04, 0.30, 0.27, 0.62], 0.90, "A black dumbbell is resting on the carpet next to the shoes."),
            ("book", [0.60, 0.58, 0.90, 0.86], 0.88, "A paperback book lying on the carpet in front of the toy."),
        ],
    ),
    "test_upn.jpeg": (
        "Pigeons fly over a snowy square where people walk between pine trees.",
        [
            ("Pigeons", [0.40, 0.50, 0.62, 0.88], 0.93, "A flock of pigeons is landing on the snowy square."),
            ("Pigeons", [0.80, 0.55, 0.99, 0.75], 0.66, "Pigeons pecking at the snow near the people."),
            ("snowy square", [0.00, 0.55, 1.00, 1.00], 0.58, "A snowy square is covered in footprints and birds."),
            ("people", [0.05, 0.45, 0.30, 0.78], 0.81, "People wearing dark winter coats walk across the snow."),
            ("pine trees", [0.00, 0.00, 0.16, 0.60], 0.74, "A tall pine tree is standing at the edge of the square."),
        ],
    ),
}


def build_script(names=None) -> dict:
    """The script with absolute image paths, pixel boxes and character spans."""
    script = {}
    for name, (caption, regions) in SCRIPT_FRACTIONS.items():
        if names is not None and name not in names:
            continue
        path = IMAGES / name
        with Image.open(path) as im:
            w, h = im.size
        entries = []
        for phrase, frac, score, description in regions:
            start = caption.index(phrase)
            box = [round(frac[0] * w, 1), round(frac[1] * h, 1), round(frac[2] * w, 1), round(frac[3] * h, 1)]
            entries.append({"phrase": phrase, "span": [start, start + len(phrase)], "box": box,
                            "score": score, "description": description})
        script[str(Path(path))] = {"caption": caption, "regions": entries}
    return script
