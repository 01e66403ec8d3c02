"""``scripts/sweep_proposal_filter.py`` on the tiny saved pipeline and two world-like records."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation.standins import write_world

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sweep_proposal_filter.py"


def _sweep(tmp_path, model_dir, *extra):
    data = write_world(tmp_path)
    out = tmp_path / "sweep.json"
    cmd = [sys.executable, str(SCRIPT), "--model", str(model_dir), "--data", str(data), "--cache",
           str(tmp_path / "cache"), "--samples", "3", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600), out


@pytest.mark.slow
def test_sweep_counts_what_each_filter_gives(tiny_pipeline_dir, tmp_path):
    res, out = _sweep(tmp_path, tiny_pipeline_dir, "--setting", "fine:0:0.8:5", "--setting", "fine:1:0.8:5",
                      "--setting", "fine+coarse:0:0:7")
    assert res.returncode == 0, res.stderr
    rows = {r["setting"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["fine:0:0.8:5"]["boxes"] == 5 and rows["fine+coarse:0:0:7"]["boxes"] == 7
    nothing = rows["fine:1:0.8:5"]  # no proposal of a random UPN scores 1: nothing given, nothing reachable
    assert nothing["boxes"] == 0 and nothing["oracle"] == 0 and nothing["acc"] == 0
    for row in rows.values():
        assert row["num_samples"] == 3 and len(row["correct"]) == 3 and 0 <= row["acc"] <= row["oracle"] <= 1
    assert sorted(p.parent.name for p in (tmp_path / "cache").rglob("*.npz")) == ["coarse"] * 2 + ["fine"] * 2


def test_sweep_rejects_a_bad_setting(tmp_path):
    res, _ = _sweep(tmp_path, tmp_path, "--setting", "medium:0.3:0.8:100")
    assert res.returncode != 0 and "bad setting 'medium:0.3:0.8:100'" in res.stderr
