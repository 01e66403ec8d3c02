

def test_caption_metrics_without_pycocoevalcap(monkeypatch):
    import sys

    from chatrex.evaluation.region import caption_metrics

    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)
    out = caption_metrics({"a": "a red car"}, {"a": ["a red car"]})
    assert out["BLEU-1"] == "skipped: pycocoevalcap not installed"
    assert out["METEOR"] == "skipped: pycocoevalcap not installed"
