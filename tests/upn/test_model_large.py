"""The official UPN-large architecture: built on the meta device (no memory), its state_dict keys and
shapes equal the reference listing exactly and its unique parameter count is 217,638,460."""

from __future__ import annotations

import json

import torch

from chatrex.upn.checkpoint import alias_groups
from chatrex.upn.model import build_upn
from tests.conftest import SHARED

TSV = SHARED / "reference" / "upn_large_state_dict.tsv"


def test_upn_large_state_dict_matches_reference_listing():
    with torch.device("meta"):
        model = build_upn("upn_large")
    assert next(model.parameters()).device.type == "meta"
    sd = model.state_dict()
    want = []
    for line in TSV.read_text().splitlines():
        name, shape = line.split("\t")
        want.append((name, json.loads(shape)))
    assert len(want) == 701
    got = [(k, list(v.shape)) for k, v in sd.items()]
    assert dict(got) == dict(want)
    assert got == want  # same order as the official module tree, too
    assert sum(p.numel() for p in model.parameters()) == 217_638_460
    # the 66 alias names of the shared box MLP: 6 tensors x 12 names each
    groups = [names for names in alias_groups(model).values() if len(names) > 1]
    assert len(groups) == 6 and all(len(n) == 12 for n in groups)
    assert sum(len(n) - 1 for n in groups) == 66
    buffers = [k for k in sd if k.endswith("relative_position_index")]
    assert len(buffers) == 24
