"""Small random scene records in the world format, for the language tests (no renderer needed)."""

from __future__ import annotations

import random

from chatrex.data.world import catalog


def random_scene(seed: int, n_objects: int = 8, width: int = 320, height: int = 240,
                 categories: tuple[str, ...] | None = None, with_parts: bool = True) -> dict:
    """A record with ``n_objects`` instances (random categories, attributes and integer boxes), parts
    for composite categories, and box-derived relations between some instance pairs."""
    rng = random.Random(seed)
    names = categories or catalog.CATEGORY_NAMES
    regions, relations = [], []
    next_id = 0
    for _ in range(n_objects):
        cat = catalog.CATEGORY_BY_NAME[rng.choice(names)]
        w = rng.randint(12, width // 3)
        h = rng.randint(12, height // 3)
        x0, y0 = rng.randint(0, width - w), rng.randint(0, height - h)
        attrs = {
            "color": rng.choice(catalog.COLOR_NAMES[:4]),
            "size": rng.choice(catalog.SIZE_NAMES),
            "pattern": rng.choice(catalog.PATTERNS),
            "orientation": rng.choice(cat.orientations),
        }
        inst = {"id": next_id, "box": [x0, y0, x0 + w, y0 + h], "category": cat.name, "level": "instance",
                "parent": None, "attributes": attrs}
        regions.append(inst)
        next_id += 1
        if with_parts:
            for part in cat.parts:
                for _ in range(rng.choice((1, 1, 2))):
                    pw, ph = max(2, w // 3), max(2, h // 3)
                    px, py = rng.randint(x0, x0 + w - pw), rng.randint(y0, y0 + h - ph)
                    regions.append({"id": next_id, "box": [px, py, px + pw, py + ph], "category": part,
                                    "level": "part", "parent": inst["id"],
                                    "attributes": {"color": rng.choice(("black", "gray"))}})
                    next_id += 1
    instances = [r for r in regions if r["level"] == "instance"]
    for a in instances:
        for b in instances:
            if a is b or rng.random() > 0.3:
                continue
            ax = (a["box"][0] + a["box"][2]) / 2
            bx = (b["box"][0] + b["box"][2]) / 2
            ay = (a["box"][1] + a["box"][3]) / 2
            by = (b["box"][1] + b["box"][3]) / 2
            if abs(ax - bx) >= abs(ay - by):
                pred = "left of" if ax < bx else "right of"
            else:
                pred = "above" if ay < by else "below"
            relations.append({"subject": a["id"], "predicate": pred, "object": b["id"]})
    return {"id": f"test-{seed}", "image": f"images/{seed}.png", "width": width, "height": height,
            "source": "world", "split": "train", "regions": regions, "relations": relations}
