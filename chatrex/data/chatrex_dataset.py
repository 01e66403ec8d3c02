"""ChatRex training samples rendered from records (``chatrex.data.schema``).

Each sample is one (image, box list, question, answer) for one task. The box list is what the
model will index: ground-truth regions mixed with proposals as in the paper (proposals with IoU > 0.9
to a ground-truth box are dropped, at most 100 boxes, shuffled so an index carries no order
information). Proposals come from the record's optional ``proposals`` field (written by a UPN run) or,
when absent, are synthesised around and between the ground-truth boxes.

Stage 1 (alignment) uses grounded image captions and region categories; stage 2 uses every task.

**Mask regions.** A region task (``region_*``) gives each region it asks about as the region's mask
instead of its box with probability ``mask_region_rate``, when the record has the mask (``regions[*].mask``,
COCO RLE; the world writes them). The item then carries ``masks`` (box index → RLE), which the collate
hands to the processor's ``regions=`` input; the RLE is decoded there, in the data workers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from chatrex.data.jsonl import JsonlRecords, load_training_records
from chatrex.data.seeded_index import split_index
from chatrex.grounding.prompts import MAX_OBJECTS, build_answer, build_prompt
from chatrex.utils.image import load_image

#: Task mix of each stage (relative weights); a task a record cannot serve is skipped.
STAGE_TASKS: dict[str, dict[str, float]] = {
    "stage1": {"caption_brief": 2.0, "caption_detailed": 1.0, "region_category": 2.0},
    "stage2": {
        "detection": 4.0, "referring": 3.0, "region_category": 1.5, "region_phrase": 1.0, "region_brief": 1.0,
        "region_sentence": 1.0, "region_classification": 1.0, "counting": 1.5, "caption_brief": 1.0,
        "caption_detailed": 1.0, "conversation": 2.0, "region_relation": 0.5,
    },
}
_OBJ_RE = re.compile(r"<obj(\d+)>")


@dataclass
class ChatRexDataConfig:
    """Attributes:
        files: JSONL record files.
        stage: "stage1" or "stage2" (picks the default task mix).
        task_weights: override of the task mix.
        max_boxes: cap of the box list (the model knows <obj0>..<obj99>).
        proposal_iou_drop: proposals with IoU above this to any ground-truth box are dropped.
        synth_proposals: (min, max) number of synthesised proposals when a record has none.
        absent_prob: probability that detection/counting asks for a category absent from the image.
        region_levels: which region levels can be targets ("instance", "part").
        max_targets: most categories a detection prompt names, and most regions a region prompt asks
            about (half the prompts ask about one, the rest about 2..max_targets, uniformly).
        region_boxes_only_prob: probability that a region task gets only a few ground-truth boxes
            (1-3, including the asked ones) instead of the full mixed list, as when a user draws them.
        mask_region_rate: probability that a region task gives a region it asks about (with the short
            list: each drawn region) as its mask rather than its box, where the record has the mask.
    """

    files: list[str] = field(default_factory=list)
    stage: str = "stage2"
    task_weights: Optional[dict[str, float]] = None
    max_boxes: int = MAX_OBJECTS
    proposal_iou_drop: float = 0.9
    synth_proposals: tuple[int, int] = (5, 30)
    absent_prob: float = 0.15
    region_levels: list[str] = field(default_factory=lambda: ["instance", "part"])
    max_targets: int = 3
    region_boxes_only_prob: float = 0.3
    mask_region_rate: float = 0.5


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou as _iou

    if a.numel() == 0 or b.numel() == 0:
        return torch.zeros(a.shape[0], b.shape[0])
    return _iou(a, b)


def synthesize_proposals(gt: torch.Tensor, width: int, height: int, n: int, rng: random.Random) -> torch.Tensor:
    """Proposal-like distractors: jittered, shrunk, grown and merged ground-truth boxes, plus random ones.

    Args:
        gt: (N, 4) xyxy pixels. Returns (n, 4) xyxy pixels inside the image.
    """
    out = []
    for _ in range(n):
        kind = rng.random()
        if len(gt) and kind < 0.6:
            x0, y0, x1, y1 = gt[rng.randrange(len(gt))].tolist()
            w, h = x1 - x0, y1 - y0
            s = rng.uniform(0.15, 0.6)
            x0 += rng.uniform(-s, s) * w
            x1 += rng.uniform(-s, s) * w
            y0 += rng.uniform(-s, s) * h
            y1 += rng.uniform(-s, s) * h
        elif len(gt) >= 2 and kind < 0.8:
            a, b = rng.sample(range(len(gt)), 2)
            x0, y0 = torch.minimum(gt[a, :2], gt[b, :2]).tolist()
            x1, y1 = torch.maximum(gt[a, 2:], gt[b, 2:]).tolist()
        else:
            w = rng.uniform(0.05, 0.6) * width
            h = rng.uniform(0.05, 0.6) * height
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            x1, y1 = x0 + w, y0 + h
        x0, x1 = sorted((min(max(x0, 0.0), width - 1.0), min(max(x1, 1.0), float(width))))
        y0, y1 = sorted((min(max(y0, 0.0), height - 1.0), min(max(y1, 1.0), float(height))))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        out.append([x0, y0, x1, y1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def build_box_list(record: dict, rng: random.Random, cfg: ChatRexDataConfig) -> tuple[list[list[float]], dict[int, int]]:
    """Mix ground truth with proposals, cap and shuffle.

    Returns:
        boxes: the list the model indexes (xyxy pixels).
        index_of: region id -> its index in ``boxes`` (regions dropped by the cap are absent).
    """
    regions = [r for r in record.get("regions", []) if r.get("level", "instance") in cfg.region_levels]
    if len(regions) > cfg.max_boxes:
        regions = rng.sample(regions, cfg.max_boxes)
    gt = torch.tensor([r["box"] for r in regions], dtype=torch.float32).reshape(-1, 4)
    if record.get("proposals"):
        props = torch.tensor([p["box"] if isinstance(p, dict) else p for p in record["proposals"]], dtype=torch.float32).reshape(-1, 4)
    else:
        lo, hi = cfg.synth_proposals
        props = synthesize_proposals(gt, int(record["width"]), int(record["height"]), rng.randint(lo, hi), rng)
    if len(props) and len(gt):
        props = props[box_iou(props, gt).max(dim=1).values <= cfg.proposal_iou_drop]
    room = cfg.max_boxes - len(regions)
    props = props[:room]
    entries = [("gt", r["id"], [float(v) for v in r["box"]]) for r in regions] + [("prop", None, p.tolist()) for p in props]
    rng.shuffle(entries)
    index_of = {rid: i for i, (kind, rid, _) in enumerate(entries) if kind == "gt"}
    return [b for _, _, b in entries], index_of


class ChatRexDataset(torch.utils.data.Dataset):
    """Items: ``{"image": PIL, "boxes": [[x0,y0,x1,y1]], "question": str, "answer": str, "task": str,
    "masks": {box index: COCO RLE}}`` (``masks`` empty unless a region task gave regions as masks)."""

    def __init__(self, cfg: ChatRexDataConfig, records: Optional[Sequence[tuple[dict, Path]]] = None) -> None:
        if cfg.stage not in STAGE_TASKS:
            raise ValueError(f"stage must be one of {sorted(STAGE_TASKS)}, got {cfg.stage!r}")
        if cfg.max_targets < 1:
            raise ValueError(f"max_targets must be >= 1, got {cfg.max_targets}")
        if not 0.0 <= cfg.region_boxes_only_prob <= 1.0:
            raise ValueError(f"region_boxes_only_prob must be in [0, 1], got {cfg.region_boxes_only_prob}")
        if not 0.0 <= cfg.mask_region_rate <= 1.0:
            raise ValueError(f"mask_region_rate must be in [0, 1], got {cfg.mask_region_rate}")
        self.cfg = cfg
        self.weights = dict(cfg.task_weights or STAGE_TASKS[cfg.stage])
        unknown = set(self.weights) - set(STAGE_TASKS["stage2"])
        if unknown:
            raise ValueError(f"unknown tasks in task_weights: {sorted(unknown)}")
        if records is None:
            records = load_training_records(cfg.files, "the ChatRex dataset")
        elif not records:
            raise ValueError("the ChatRex dataset is empty: give at least one record")
        self.records = records if isinstance(records, JsonlRecords) else list(records)
        self.vocabulary = sorted({r["category"] for rec, _ in self.records for r in rec.get("regions", []) if r.get("category")})
        if cfg.mask_region_rate > 0:
            warn_without_masks(self.records, cfg.mask_region_rate, "the ChatRex dataset")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item) -> dict[str, Any]:
        index, seed = split_index(item)
        rng = random.Random(seed if seed is not None else index)
        record, path = self.records[index]
        boxes, index_of = build_box_list(record, rng, self.cfg)
        tasks = list(self.weights)
        order = rng.choices(tasks, weights=[self.weights[t] for t in tasks], k=len(tasks) * 2) + tasks
        for task in order:
            task_boxes, task_index, drawn = boxes, index_of, False
            if task.startswith("region_") and index_of and rng.random() < self.cfg.region_boxes_only_prob:
                task_boxes, task_index = user_box_list(record, index_of, rng)
                drawn = True
            sample = render_task(task, record, task_index, self.vocabulary, rng, self.cfg.absent_prob,
                                 self.cfg.max_targets)
            if sample is not None:
                question, answer = sample
                masks = {}
                if task.startswith("region_") and self.cfg.mask_region_rate > 0:
                    asked = range(len(task_boxes)) if drawn else sorted({int(k) for k in _OBJ_RE.findall(question)})
                    masks = mask_regions(record, task_index, asked, self.cfg.mask_region_rate, rng)
                return {"image": load_image(path), "boxes": task_boxes, "question": question, "answer": answer,
                        "task": task, "masks": masks}
        raise ValueError(f"record {record.get('id')!r} ({path}) serves none of the tasks {tasks}")


def user_box_list(record: dict, index_of: dict[int, int], rng: random.Random,
                  max_boxes: int = 3) -> tuple[list[list[float]], dict[int, int]]:
    """A short box list as a user would draw it: 1..max_boxes ground-truth regions of ``index_of``,
    shuffled (region tasks then ask about some of them)."""
    ids = rng.sample(sorted(index_of), min(len(index_of), rng.randint(1, max_boxes)))
    by_id = {r["id"]: r for r in record.get("regions", [])}
    return [[float(v) for v in by_id[i]["box"]] for i in ids], {i: k for k, i in enumerate(ids)}


def warn_without_masks(records: Sequence[tuple[dict, Path]], rate: float, what: str) -> bool:
    """Warn (and return True) when ``mask_region_rate`` asks for masks but no record has any: regions
    then stay boxes, silently, e.g. on world data written before records carried masks."""
    if any(r.get("mask") for rec, _ in records for r in rec.get("regions", [])):
        return False
    import warnings

    warnings.warn(f"{what}: mask_region_rate is {rate:g} but none of its {len(records)} records has region masks "
                  "(regions[*].mask); every region stays a box. Regenerate world data with this version "
                  "(chatrex world generate ... --overwrite) to train on masks", stacklevel=3)
    return True


def mask_regions(record: dict, index_of: dict[int, int], indices, rate: float, rng: random.Random) -> dict[int, dict]:
    """Box index → the region's mask (COCO RLE) for each of ``indices`` that is a ground-truth region with a
    mask, each with probability ``rate``."""
    region_at = {k: rid for rid, k in index_of.items()}
    by_id = {r["id"]: r for r in record.get("regions", [])}
    out = {}
    for k in indices:
        region = by_id.get(region_at.get(k))
        if region is not None and region.get("mask") and rng.random() < rate:
            out[k] = region["mask"]
    return out


def with_masks(boxes: Sequence[Sequence[float]], masks: dict[int, Any]) -> list:
    """The region list of an item: its boxes, with the mask (RLE) in place of each box that has one."""
    return [masks.get(k, box) for k, box in enumerate(boxes)]


def _num_targets(rng: random.Random, available: int, max_targets: int) -> int:
    """1 with probability 1/2, else uniform in 2..max_targets; at most ``available``."""
    k = 1 if max_targets < 2 or rng.random() < 0.5 else rng.randint(2, max_targets)
    return min(available, k)


def _regions(record: dict, index_of: dict[int, int]) -> list[dict]:
    return [r for r in record.get("regions", []) if r["id"] in index_of]


def _groundings(groundings: list[dict], index_of: dict[int, int]) -> Optional[list[dict]]:
    out = []
    for g in groundings:
        idx = [index_of[r] for r in g.get("regions", []) if r in index_of]
        if len(idx) != len(g.get("regions", [])):
            return None  # a grounded region fell out of the box list: skip this text
        out.append({"phrase": g["phrase"], "span": list(g["span"]), "indices": idx})
    return out


def render_task(task: str, record: dict, index_of: dict[int, int], vocabulary: Sequence[str],
                rng: random.Random, absent_prob: float = 0.15, max_targets: int = 3) -> Optional[tuple[str, str]]:
    """One (question, answer) of ``task`` for ``record``, or None when the record cannot serve it.

    ``max_targets`` bounds the categories of a detection prompt and the regions of a region prompt.
    """
    regions = _regions(record, index_of)
    by_cat: dict[str, list[int]] = {}
    for r in regions:
        if r.get("category"):
            by_cat.setdefault(r["category"], []).append(index_of[r["id"]])
    present = sorted(by_cat)
    absent = [c for c in vocabulary if c not in by_cat]

    if task in ("detection", "counting"):
        if not present and not absent:
            return None
        if task == "counting":
            cat = rng.choice(absent) if (absent and (rng.random() < absent_prob or not present)) else rng.choice(present)
            ids = sorted(by_cat.get(cat, []))
            return build_prompt("counting", categories=cat, rng=rng), build_answer("counting", category=cat, indices=ids)
        k = _num_targets(rng, len(present), max_targets)
        cats = rng.sample(present, k) if present else []
        if absent and (rng.random() < absent_prob or not cats):
            cats.insert(rng.randrange(len(cats) + 1), rng.choice(absent))
        dets = {c: by_cat.get(c, []) for c in cats}
        return build_prompt("detection", categories=cats, rng=rng), build_answer("detection", detections=dets)
    if task == "referring":
        cands = [r for r in regions if r.get("referring")]
        if not cands:
            return None
        r = rng.choice(cands)
        expr = r["referring"]
        return build_prompt("referring", expression=expr, rng=rng), build_answer("referring", detections={expr: [index_of[r["id"]]]})
    if task == "region_relation":
        cands = [rel for rel in record.get("relations", [])
                 if rel.get("subject") in index_of and rel.get("object") in index_of and rel.get("predicate")]
        if not cands:
            return None
        rel = rng.choice(cands)
        s, o = index_of[rel["subject"]], index_of[rel["object"]]
        return (build_prompt(task, regions=[s, o], rng=rng),
                build_answer(task, subject=s, predicate=rel["predicate"], object=o))
    if task.startswith("region_"):
        key = {"region_category": "category", "region_classification": "category", "region_phrase": "phrase",
               "region_brief": "referring", "region_sentence": "description"}[task]
        cands = [r for r in regions if r.get(key)]
        if not cands:
            return None
        chosen = rng.sample(cands, _num_targets(rng, len(cands), max_targets))
        ids = [index_of[r["id"]] for r in chosen]
        captions = {index_of[r["id"]]: r[key] for r in chosen}
        if task == "region_classification":
            if len(chosen) > 1:
                chosen, ids = chosen[:1], ids[:1]
                captions = {ids[0]: chosen[0]["category"]}
            others = [c for c in vocabulary if c != chosen[0]["category"]]
            cand = rng.sample(others, min(len(others), rng.randint(2, 5))) + [chosen[0]["category"]]
            rng.shuffle(cand)
            return build_prompt(task, regions=ids, candidates=cand, rng=rng), build_answer(task, captions=captions)
        return build_prompt(task, regions=ids, rng=rng), build_answer(task, captions=captions)
    if task in ("caption_brief", "caption_detailed"):
        kind = task.split("_")[1]
        caps = [c for c in record.get("captions", []) if c.get("kind") == kind]
        rng.shuffle(caps)
        for c in caps:
            gr = _groundings(c.get("groundings", []), index_of)
            if gr is not None:
                return build_prompt(task, rng=rng), build_answer(task, text=c["text"], groundings=gr)
        return None
    if task == "conversation":
        convs = list(record.get("conversations", []))
        rng.shuffle(convs)
        for c in convs:
            gr = _groundings(c.get("groundings", []), index_of)
            if gr is not None:
                return (build_prompt("conversation", question=c["question"], rng=rng),
                        build_answer("conversation", text=c["answer"], groundings=gr))
        return None
    raise ValueError(f"unknown task {task!r}")
