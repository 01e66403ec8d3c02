"""``benchmarks/serve_load.py`` runs end to end on CPU with the tiny model: a server subprocess on
loopback, concurrent clients, nothing lost or duplicated, the results written as JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.mllm.conftest import random_image

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_serve_load_on_the_tiny_model(carded_model_dir, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    serve_load = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "serve_load", serve_load)  # its dataclasses look themselves up there
    spec.loader.exec_module(serve_load)
    images = tmp_path / "images"
    images.mkdir()
    for s in range(2):
        Image.fromarray(random_image(s, 64, 48)).save(images / f"{s}.jpg")
    out = tmp_path / "load.json"
    code = serve_load.main(["--model", str(carded_model_dir), "--images", str(images), "--clients", "4",
                            "--requests", "6", "--max-tokens", "2", "--time-limit", "300", "--json", str(out)])
    [result] = json.loads(out.read_text())
    assert code == 0 and result["ok"] == 6 and result["lost"] == 0 and result["duplicated"] == 0
    assert result["statuses"] == {"200": 6} and result["mean_batch"] >= 1 and result["rss_peak_mib"] > 0
