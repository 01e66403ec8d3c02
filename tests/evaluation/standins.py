"""Stand-ins with the pipeline's and the UPN wrapper's call signatures, and tiny data sets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from chatrex.grounding.parser import parse_grounded


@dataclass
class StandInResult:
    answer: object
    raw_text: str
    boxes: list
    scores: Optional[list]


class ScriptedPipeline:
    """Answers with ``respond(question, boxes_given) -> (raw_text, boxes, scores)``; records every call.

    When the caller gives boxes, they are the boxes the answer's indices refer to (as in the pipeline).
    """

    def __init__(self, respond: Callable):
        self.respond = respond
        self.calls = []

    def __call__(self, images, questions, boxes=None, granularity="fine", min_score=0.3, max_boxes=100):
        self.calls.append({"n": len(images), "questions": list(questions), "boxes": boxes,
                           "granularity": granularity, "min_score": min_score, "max_boxes": max_boxes,
                           "sizes": [im.size for im in images]})
        out = []
        for i, q in enumerate(questions):
            given = None if boxes is None else boxes[i]
            raw, bxs, scores = self.respond(q, given)
            if given is not None:
                bxs, scores = given, None
            out.append(StandInResult(parse_grounded(raw, num_boxes=len(bxs)), raw, bxs, scores))
        return out


class ScriptedUPN:
    """``inference(images, prompt_type)`` returning the given proposals for every image, in order."""

    def __init__(self, proposals_by_size: dict, num_queries: int = 5):
        self.proposals_by_size = proposals_by_size
        self.num_queries = num_queries
        self.prompt_types = []

    def inference(self, images, prompt_type="fine_grained_prompt"):
        self.prompt_types.append(prompt_type)
        boxes = np.zeros((len(images), self.num_queries, 4), dtype=np.float32)
        scores = np.zeros((len(images), self.num_queries), dtype=np.float32)
        for b, im in enumerate(images):
            props = self.proposals_by_size.get((im.size, prompt_type), [])
            for q, (box, score) in enumerate(props):
                boxes[b, q] = box
                scores[b, q] = score
        return {"original_xyxy_boxes": boxes, "scores": scores}


def write_image(path: Path, size=(64, 48), color=(90, 120, 200)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def _grounding(text: str, phrase: str, regions: list) -> dict:
    start = text.index(phrase)
    return {"span": [start, start + len(phrase)], "phrase": phrase, "regions": regions}


def write_world(folder: Path) -> Path:
    """Two world-like records (64x48 and 60x40 images) as JSONL; returns the file."""
    write_image(folder / "images" / "a.png", (64, 48))
    write_image(folder / "images" / "b.png", (60, 40), (200, 30, 30))
    cap_a = "A red car is next to a tall tree."
    cap_b = "Two cars and a person."
    records = [
        {"id": "w-0", "image": "images/a.png", "width": 64, "height": 48, "source": "world", "split": "val",
         "regions": [
             {"id": 0, "box": [2, 2, 30, 20], "category": "car", "level": "instance", "phrase": "a red car",
              "referring": "the red car on the left", "description": "A red car parked on the left."},
             {"id": 1, "box": [4, 14, 10, 20], "category": "wheel", "level": "part", "parent": 0},
             {"id": 2, "box": [40, 5, 60, 40], "category": "tree", "level": "instance", "phrase": "a tall tree",
              "referring": "the tall tree on the right", "description": "A tall tree stands on the right."},
         ],
         "captions": [{"kind": "brief", "text": cap_a,
                       "groundings": [_grounding(cap_a, "red car", [0]), _grounding(cap_a, "tall tree", [2])]}]},
        {"id": "w-1", "image": "images/b.png", "width": 60, "height": 40, "source": "world", "split": "val",
         "regions": [
             {"id": 0, "box": [10, 10, 30, 30], "category": "car", "level": "instance", "phrase": "a blue car"},
             {"id": 1, "box": [32, 10, 50, 30], "category": "car", "level": "instance", "phrase": "a green car"},
             {"id": 2, "box": [0, 0, 8, 30], "category": "person", "level": "instance", "phrase": "a person",
              "referring": "the person at the far left"},
         ],
         "captions": [{"kind": "brief", "text": cap_b,
                       "groundings": [_grounding(cap_b, "cars", [0, 1]), _grounding(cap_b, "person", [2])]}]},
    ]
    path = folder / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_coco(folder: Path) -> Path:
    """A COCO file with three images (one without annotations, one with a crowd box)."""
    write_image(folder / "imgs" / "1.png", (64, 48))
    write_image(folder / "imgs" / "2.png", (60, 40))
    write_image(folder / "imgs" / "3.png", (50, 50))
    coco = {
        "images": [{"id": 1, "file_name": "imgs/1.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "imgs/2.png", "width": 60, "height": 40},
                   {"id": 3, "file_name": "imgs/3.png", "width": 50, "height": 50}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 40], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 20, 20, 20], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 5, 20, 30], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [35, 10, 20, 20], "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1},
        ],
    }
    path = folder / "ann.json"
    path.write_text(json.dumps(coco))
    return path
