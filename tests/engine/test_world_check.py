"""World check: stand-in models that read the procedural world's own annotations (the brief caption,
each grounded phrase's boxes, each region's description) must reproduce those annotations through the
real engine (files on disk, image filter, spaCy phrase extraction, grounding checks, rewriting)."""

from __future__ import annotations


import pytest

from chatrex.data.engine import EngineConfig, ImageFilterConfig, RuleBasedCaptionFilter, StepsSpec, run_engine
from chatrex.data.engine.rewrite import mentions_head
from chatrex.data.engine.standins import records_to_script
from chatrex.data.engine.steps import Phrase
from chatrex.data.jsonl import read_records, write_records
from chatrex.data.schema import validate_record
from chatrex.data.world.generate import make_record, save_image
from chatrex.data.world.language import SYNONYMS, annotate
from chatrex.data.world.scene import WorldConfig

N_SCENES = 10


@pytest.fixture(scope="module")
def world_and_engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("world_check")
    config = WorldConfig(image_size=(192, 160), normal_objects=(2, 5), crowded_prob=0.0)
    world = []
    for i in range(N_SCENES):
        image, record = make_record("train", i, config, image_format="png", language=annotate)
        record["image"] = f"images/{i:04d}.png"
        save_image(image, root / record["image"], "png")
        world.append(record)
    write_records(root / "world.jsonl", world, validate=True)
    synonyms = {k: list(v) for k, v in SYNONYMS.items()}
    spec = StepsSpec("chatrex.data.engine.standins:build_scripted_steps",
                     {"script": records_to_script(read_records(root / "world.jsonl"), root),
                      "caption_filter": {"synonyms": synonyms}})
    # world backgrounds may be one flat colour with a few small objects: keep every image
    config = EngineConfig(image_filter=ImageFilterConfig(flat_std=0.0, flat_fraction=1.0))
    summary = run_engine(root / "images", root / "engine", spec, config=config, progress=False)
    assert (summary.done, summary.rejected, summary.failed) == (N_SCENES, 0, 0)
    engine = {r["engine"]["path"]: r for r in read_records(root / "engine" / "records.jsonl")}
    return world, engine, synonyms


def _strip_article(text: str) -> str:
    for article in ("a ", "an ", "the "):
        if text.lower().startswith(article):
            return text[len(article):]
    return text


def _same_category(engine_cat: str, world_cat: str) -> bool:
    names = {world_cat, *SYNONYMS.get(world_cat, ())}
    return engine_cat in names or engine_cat.split()[-1] in {n.split()[-1] for n in names}


def test_engine_reproduces_world_annotations(world_and_engine):
    world, engine, synonyms = world_and_engine
    rewriter = RuleBasedCaptionFilter(synonyms=synonyms)
    n_groundings = n_regions = n_referring = 0
    for i, w in enumerate(world):
        e = engine[f"{i:04d}.png"]
        assert validate_record(e) == []
        assert (e["width"], e["height"]) == (w["width"], w["height"])
        wcap = next(c for c in w["captions"] if c["kind"] == "brief")
        (ecap,) = e["captions"]
        assert ecap["text"] == wcap["text"]
        by_id = {r["id"]: r for r in w["regions"]}
        assert len(ecap["groundings"]) == len(wcap["groundings"]), (wcap, ecap)
        for wg, eg in zip(wcap["groundings"], ecap["groundings"]):
            # same phrase (without its article), span inside the world's span
            assert eg["phrase"] == _strip_article(wg["phrase"])
            assert wg["span"][0] <= eg["span"][0] and eg["span"][1] == wg["span"][1]
            assert ecap["text"][eg["span"][0]:eg["span"][1]] == eg["phrase"]
            # same boxes
            wregions = [by_id[r] for r in wg["regions"]]
            eregions = [e["regions"][r] for r in eg["regions"]]
            assert sorted(r["box"] for r in eregions) == sorted(r["box"] for r in wregions)
            for er in eregions:
                wr = next(r for r in wregions if r["box"] == er["box"])
                assert er["level"] == "instance" == wr["level"]
                assert _same_category(er["category"], wr["category"]), (er["category"], wr["category"])
                assert er["description"] == wr["description"]
                phrase = Phrase(eg["phrase"], *eg["span"], eg["phrase"].split()[-1], er["category"])
                assert er.get("referring") == rewriter.rewrite(phrase, wr["description"])
                if er.get("referring"):
                    n_referring += 1
                    assert 5 <= len(er["referring"].split()) <= 10
                    assert mentions_head(phrase, er["referring"], rewriter.synonyms)
            n_groundings += 1
            n_regions += len(eregions)
        assert len(e["regions"]) == sum(len(g["regions"]) for g in wcap["groundings"])
    assert n_groundings >= N_SCENES and n_referring >= n_regions // 2
