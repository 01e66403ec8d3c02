"""End-to-end ChatRex: image(s) + question(s) → grounded answers with boxes.

:class:`ChatRexPipeline` chains the parts::

    image ─► UPN proposals (or the user's boxes) ─► top max_boxes ─► ChatRexProcessor ─► model.generate
          ─► decode (special tokens kept) ─► parse_grounded(num_boxes=K) ─► PipelineResult

Example::

    pipe = ChatRexPipeline.from_pretrained("path/to/model-dir", device="cuda")
    result = pipe("street.jpg", "Find every car; person in this image. Reply with the indices ...")[0]
    result.answer.groundings, result.boxes

A model directory holds the two parts in their own ``save_pretrained`` formats::

    model-dir/
      upn/       chatrex.upn.checkpoint.save_pretrained (config + weights)
      chatrex/   ChatRexForConditionalGeneration + ChatRexProcessor save_pretrained
      pipeline_config.json   optional: {"upn_resize": 800, "upn_max_size": 1333, "min_score": 0.3, "nms": 0.8}
      model_card.json, README.md   optional: the model card (chatrex.interfaces.model_card) -> pipe.model_card

An MLLM folder on its own also loads, with the UPN named separately: an official checkpoint
(``IDEA-Research/ChatRex-7B`` or a RexSeek model, as downloaded) or one of our saved ``chatrex/`` folders::

    pipe = ChatRexPipeline.from_pretrained("checkpoints/ChatRex-7B", upn="checkpoints/upn_large.pth", device="cuda")

Unlike the official release, several images run per call (``batch_size`` per forward pass, left
padding), the device is a choice, user boxes skip the UPN, and every malformed answer is parsed
without raising (what was dropped is listed in ``result.answer.dropped``).

User regions may be masks as well as boxes (``regions=``: binary arrays, COCO polygons or COCO RLE,
mixed with boxes; RegionGPT-style mask pooling, :mod:`chatrex.mllm.regions`). A mask region's box in
the result is its bounding box, and ``result.masks`` holds its mask as COCO RLE.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from transformers import TextIteratorStreamer

from chatrex.grounding.parser import GroundedAnswer, boxes_for, parse_grounded
from chatrex.interfaces.model_card import load_model_card
from chatrex.utils.batch import batch_to
from chatrex.utils.image import ImageInput, load_image

__all__ = [
    "ChatRexPipeline",
    "PipelineResult",
    "StreamingAnswer",
    "DEFAULT_MODEL_DIR",
    "UPN_SUBDIR",
    "CHATREX_SUBDIR",
    "GRANULARITIES",
    "validate_boxes",
    "validate_regions",
]

#: The shipped model directory (``chatrex/assets/chatrex-small``); ``chatrex predict`` uses it by default.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "chatrex-small"
UPN_SUBDIR = "upn"
CHATREX_SUBDIR = "chatrex"
#: Optional file in a model directory with the UPN input size and proposal filter the pipeline should use.
PIPELINE_CONFIG = "pipeline_config.json"
#: The settings ``pipeline_config.json`` may hold.
PIPELINE_CONFIG_KEYS = ("upn_resize", "upn_max_size", "min_score", "nms")
#: The official proposal filter (score threshold, NMS IoU), used where a model directory names none.
OFFICIAL_MIN_SCORE = 0.3
OFFICIAL_NMS = 0.8
_FROM_DIR = object()
#: Accepted ``granularity`` values (the UPN prompt: fine = parts and small objects, coarse = whole objects).
GRANULARITIES = ("fine", "coarse", "fine_grained_prompt", "coarse_grained_prompt")
#: Most boxes ChatRex takes (its vocabulary has ``<obj0>`` … ``<obj99>``).
MAX_BOXES = 100
#: Generation defaults (greedy, like the official examples); ``generation_config`` / ``**gen_kwargs`` override.
DEFAULT_GENERATION = {"max_new_tokens": 512, "do_sample": False}

_OBJ_REF = re.compile(r"<obj(\d+)>")
_PLACEHOLDERS = ("<image>", "<objfeat>")

Boxes = Sequence[Sequence[float]]


@dataclass
class PipelineResult:
    """One image's answer.

    Attributes:
        answer: the parsed answer (indices refer to ``boxes``).
        raw_text: the generated text, special tokens kept, EOS/padding removed.
        boxes: the K boxes the model was given, ``[x0, y0, x1, y1]`` in original-image pixels.
        scores: UPN scores of those boxes, or ``None`` when the user gave the boxes.
        masks: with user regions that include masks: per region its mask as COCO RLE
            (``{"size": [H, W], "counts": str}``), None for a box region; else None.
    """

    answer: GroundedAnswer
    raw_text: str
    boxes: list[list[float]]
    scores: Optional[list[float]]
    masks: Optional[list[Optional[dict]]] = None

    def grounded_boxes(self) -> list[list[list[float]]]:
        """For each grounding of the answer, its boxes."""
        return boxes_for(self.answer, self.boxes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: ``{"answer": {...}, "raw_text", "boxes", "scores"}`` (and ``"masks"`` when regions
        were masks); each grounding also lists its ``boxes``."""
        answer = self.answer.to_dict()
        for g, gb in zip(answer["groundings"], self.grounded_boxes()):
            g["boxes"] = [list(b) for b in gb]
        out = {"answer": answer, "raw_text": self.raw_text, "boxes": self.boxes, "scores": self.scores}
        if self.masks is not None:
            out["masks"] = self.masks
        return out


# ------------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------------
def validate_boxes(boxes: Any, width: int, height: int, max_boxes: int = 100, where: str = "boxes") -> list[list[float]]:
    """User boxes (``[[x0, y0, x1, y1], ...]`` in pixels of a ``width`` x ``height`` image) → float lists
    clipped to the image; a ``ValueError`` naming the problem for anything malformed (wrong length,
    non-finite, empty or inverted, outside the image, more than ``max_boxes``)."""
    if hasattr(boxes, "tolist"):
        boxes = boxes.tolist()
    if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence):
        raise ValueError(f"{where}: boxes must be a list of [x0, y0, x1, y1], got {type(boxes).__name__}")
    if len(boxes) > max_boxes:
        raise ValueError(f"{where}: {len(boxes)} boxes given but at most {max_boxes} are allowed (ChatRex takes ≤ {MAX_BOXES})")
    out = []
    for k, box in enumerate(boxes):
        try:
            vals = [float(v) for v in box]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: box {k} is not a list of 4 numbers: {box!r}") from None
        if len(vals) != 4:
            raise ValueError(f"{where}: box {k} has {len(vals)} values; expected [x0, y0, x1, y1]")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"{where}: box {k} has a non-finite coordinate: {vals}")
        x0, y0, x1, y1 = vals
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{where}: box {k} {vals} is empty or inverted; boxes are [x0, y0, x1, y1] with x1 > x0, y1 > y0")
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if cx1 <= cx0 or cy1 <= cy0:
            raise ValueError(f"{where}: box {k} {vals} lies outside the {width}x{height} image")
        out.append([cx0, cy0, cx1, cy1])
    return out


def validate_regions(regions: Any, width: int, height: int, max_boxes: int = 100,
                     where: str = "regions") -> tuple[list[Any], list[list[float]], list[Optional[dict]]]:
    """User regions (boxes ``[x0, y0, x1, y1]`` and masks, mixed; see :mod:`chatrex.mllm.regions`) of a
    ``width`` x ``height`` image → ``(entries, boxes, masks)``: the regions with every mask decoded to an
    (H, W) bool array (boxes clipped), each region's box in pixels (a mask's bounding box), and each
    region's mask as COCO RLE (None for a box). A ``ValueError`` names the problem: a malformed box, a mask
    that is empty, of the wrong size, not binary, a bad polygon or RLE, more than ``max_boxes`` regions."""
    from chatrex.utils.masks import MaskError, decode_mask, encode_rle, is_box, mask_bbox

    if hasattr(regions, "tolist") and getattr(regions, "ndim", 0) == 2 and regions.shape[-1] == 4:
        regions = regions.tolist()  # an (N, 4) array of boxes
    if isinstance(regions, (str, bytes)) or not isinstance(regions, (list, tuple)):
        raise ValueError(f"{where}: regions must be a list of boxes [x0, y0, x1, y1] and masks, got {type(regions).__name__}")
    if len(regions) > max_boxes:
        raise ValueError(f"{where}: {len(regions)} regions given but at most {max_boxes} are allowed (ChatRex takes ≤ {MAX_BOXES})")
    entries: list[Any] = []
    boxes: list[list[float]] = []
    masks: list[Optional[dict]] = []
    for k, region in enumerate(regions):
        if is_box(region):
            box = validate_boxes([region], width, height, max_boxes, where)[0]
            entries.append(box)
            boxes.append(box)
            masks.append(None)
            continue
        try:
            mask = decode_mask(region, height, width, where=f"{where}: region {k}")
        except MaskError as exc:
            raise ValueError(str(exc)) from None
        entries.append(mask)
        boxes.append([float(v) for v in mask_bbox(mask)])
        masks.append(encode_rle(mask))
    return entries, boxes, masks


def _check_question(question: Any, where: str, num_boxes: int) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: the question is empty or not a string ({question!r})")
    for ph in _PLACEHOLDERS:
        if ph in question:
            raise ValueError(f"{where}: the question contains the placeholder {ph}, which the processor inserts itself")
    for m in _OBJ_REF.finditer(question):
        if int(m.group(1)) >= num_boxes:
            raise ValueError(
                f"{where}: the question refers to {m.group(0)} but the image has only {num_boxes} boxes "
                f"(<obj0>..<obj{num_boxes - 1}>)" if num_boxes else
                f"{where}: the question refers to {m.group(0)} but the image has no boxes"
            )
    return question


def _canonical_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}")
    return "fine" if granularity.startswith("fine") else "coarse"


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


# ------------------------------------------------------------------------------------------------
# streaming
# ------------------------------------------------------------------------------------------------
class _AnswerStreamer(TextIteratorStreamer):
    """A ``transformers.TextIteratorStreamer`` for one answer: the prompt is skipped, generation stops being
    reported at the first EOS id, and the tokens the processor drops when decoding (bos/eos/pad/end of turn)
    are dropped here too, so the streamed text is the answer as ``processor.decode`` writes it, ChatRex
    tokens kept. Each token is decoded with the words since the last line break only
    (``TextIteratorStreamer``'s own bookkeeping), not with the whole answer again.

    Iterating yields text pieces; ``ids`` holds the answer's token ids.
    """

    def __init__(self, tokenizer: Any, drop_ids: set[int], eos_ids: set[int]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=False)
        self.drop_ids = drop_ids
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.stopped = False

    def put(self, value: torch.Tensor) -> None:
        if self.next_tokens_are_prompt:
            super().put(value)
            return
        if self.stopped:
            return
        kept = []
        for i in value.reshape(-1).tolist():
            if i in self.eos_ids:
                self.stopped = True
                break
            if i not in self.drop_ids:
                kept.append(int(i))
        if kept:
            self.ids.extend(kept)
            super().put(torch.tensor(kept))


class _StopGeneration:
    """A ``transformers`` stopping criterion that ends ``generate`` once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class StreamingAnswer:
    """An answer being generated: iterate for text pieces; the boxes are known from the start.

    Attributes:
        boxes / scores: the boxes given to the model (original pixels) and their UPN scores (or None).
        text: the text received so far (special tokens kept); once the answer has ended, the whole answer
            decoded at once.

    Iterating yields text pieces as they are generated (and re-raises an error of the generation
    thread); :meth:`result` waits for the end and returns the :class:`PipelineResult`; :meth:`cancel`
    stops the generation (e.g. when the client has gone), after which iterating ends early.
    """

    def __init__(self, streamer: Any, thread: threading.Thread, errors: list, boxes, scores,
                 stop: Optional[threading.Event] = None, decode: Any = None, masks: Optional[list] = None) -> None:
        self._streamer = streamer
        self._thread = thread
        self._errors = errors
        self._stop = stop if stop is not None else threading.Event()
        self._decode = decode
        self._done = False
        self.boxes: list[list[float]] = boxes
        self.scores: Optional[list[float]] = scores
        self.masks: Optional[list] = masks
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        while not self._done:
            piece = self._streamer.text_queue.get()
            if piece is self._streamer.stop_signal:
                self._done = True
                self._thread.join()
                if self._decode is not None and not self._errors:
                    self.text = self._decode(self._streamer.ids)
                break
            if piece:
                self.text += piece
                yield piece
        if self._errors:
            raise RuntimeError(f"generation failed: {type(self._errors[0]).__name__}: {self._errors[0]}") from self._errors[0]

    def cancel(self) -> None:
        """Ask the generation to stop after its current step (the text so far stays)."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._stop.is_set()

    @property
    def num_tokens(self) -> int:
        """Answer tokens generated so far (EOS and the tokens ``processor.decode`` drops not counted)."""
        return len(self._streamer.ids)

    def result(self) -> PipelineResult:
        for _ in self:
            pass
        return PipelineResult(parse_grounded(self.text, num_boxes=len(self.boxes)), self.text, self.boxes, self.scores,
                              self.masks)


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------
class ChatRexPipeline:
    """UPN proposals + the ChatRex MLLM, batched, on any device.

    Args:
        upn: a ``chatrex.upn.wrapper.UPNWrapper`` (``inference`` + ``filter``), or ``None`` when every
            call will pass its own boxes.
        model: a ``ChatRexForConditionalGeneration`` (HF ``generate``).
        processor: a ``ChatRexProcessor`` (``__call__(images=, questions=, boxes=)``, ``decode``,
            ``tokenizer``).
        generation_config: a ``transformers.GenerationConfig`` or dict; default greedy,
            ``max_new_tokens=512``, EOS/pad from the tokenizer.
        min_score / nms: the proposal filter calls use when they name none (score threshold, NMS IoU;
            ``nms <= 0`` turns NMS off); default the official 0.3 / 0.8. A model directory's
            ``pipeline_config.json`` may set them for its UPN.
        generation: how greedy answers are decoded (:mod:`chatrex.mllm.fast_generation`): ``"default"``
            (``model.generate``), ``"static"`` (a static KV cache, one prefill pass), ``"compiled"`` (that,
            with the decode step compiled and, on CUDA, replayed as a CUDA graph; the first call per
            batch size and cache length compiles), ``"auto"`` (``"compiled"`` on CUDA, else ``"static"``).
            Settings other than greedy (sampling, beams, ...) always use ``model.generate``. The tokens
            are the same either way.
    """

    def __init__(self, upn: Any, model: Any, processor: Any, generation_config: Any = None,
                 min_score: float = OFFICIAL_MIN_SCORE, nms: float = OFFICIAL_NMS, generation: str = "auto") -> None:
        if model is None or processor is None:
            raise ValueError("ChatRexPipeline needs a model and a processor")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if not float(nms) <= 1.0:
            raise ValueError(f"nms must be an IoU <= 1 (<= 0 turns NMS off), got {nms}")
        self.min_score = float(min_score)
        self.nms = float(nms)
        self.upn = upn
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"the processor ({type(processor).__name__}) has no tokenizer")
        self.generation_config = self._build_generation_config(generation_config)
        #: the model directory's card (chatrex.interfaces.model_card), set by from_pretrained; None otherwise
        self.model_card = None
        from chatrex.mllm.fast_generation import resolve_backend

        self.generation = resolve_backend(generation, self.device)
        self._static_generator: Any = None

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, os.PathLike],
        device: Union[str, torch.device] = "cpu",
        dtype: Union[None, str, torch.dtype] = None,
        upn_resize: Optional[int] = None,
        upn_max_size: Any = _FROM_DIR,
        generation_config: Any = None,
        upn: Union[None, str, os.PathLike] = None,
        generation: str = "auto",
        upn_precision: str = "fp32",
        upn_compile: bool = False,
    ) -> "ChatRexPipeline":
        """Load ``path/upn`` and ``path/chatrex`` (see the module docstring), or an MLLM folder ``path`` on its
        own (an official checkpoint or one of our ``chatrex/`` folders) with the UPN ``upn``.

        Args:
            device: where both models run (``"cpu"``, ``"cuda"``, ``"cuda:1"``…; checked to exist).
            dtype: the MLLM's dtype (``"bfloat16"``, ``torch.float16``…; default: as saved; an official
                checkpoint: bfloat16 on a GPU that has it, float16 on other GPUs, float32 on the CPU).
            upn: a UPN checkpoint (an official ``.pth`` such as ``upn_large.pth``, or a saved UPN folder) used
                instead of ``path/upn``. With an MLLM folder and no ``upn``, the pipeline has no UPN and
                every call must pass its boxes.
            upn_resize / upn_max_size: UPN input size (short side / long-side bound, ``None`` = no
                bound); default: the directory's ``pipeline_config.json``, else the size ``upn/``
                records (its ``preprocessor_config.json``), else the official 800 / 1333.
            generation: the decoding backend (see the class).
            upn_precision / upn_compile: ``UPNWrapper``'s ``precision`` (``"fp32"``, ``"bf16"``) and
                ``compile``.

        Raises:
            FileNotFoundError: the directory or one of its parts is missing (the message names it).
        """
        from chatrex.mllm.modeling_chatrex import ChatRexForConditionalGeneration
        from chatrex.mllm.processing_chatrex import ChatRexProcessor
        from chatrex.upn.wrapper import UPNWrapper, resolve_device

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"model directory '{root}' does not exist; it must hold '{UPN_SUBDIR}/' (UPN) and "
                f"'{CHATREX_SUBDIR}/' (ChatRex model + processor), or be a ChatRex / official MLLM folder"
            )
        from chatrex.mllm.delta import is_delta_dir, load_delta
        from chatrex.mllm.official import is_official_dir

        upn_path = Path(upn) if upn is not None else None
        if upn_path is not None and not upn_path.exists():
            raise FileNotFoundError(f"UPN checkpoint '{upn_path}' does not exist")
        alone = (root / "config.json").is_file() or is_delta_dir(root)  # an MLLM folder on its own
        mllm_dir = root if alone else root / CHATREX_SUBDIR
        upn_dir = upn_path if (alone or upn_path is not None) else root / UPN_SUBDIR
        parts = [(mllm_dir, "the ChatRex model and processor (save_pretrained)")]
        if not alone and upn_path is None:
            parts.insert(0, (upn_dir, "the UPN (chatrex.upn.checkpoint.save_pretrained)"))
        for part, what in parts:
            if not part.is_dir():
                raise FileNotFoundError(f"model directory '{root}' lacks '{part.name}/', which should hold {what}")
        official = is_official_dir(mllm_dir)
        delta = is_delta_dir(mllm_dir)
        if not delta and not (mllm_dir / "config.json").is_file():
            raise FileNotFoundError(f"'{mllm_dir}' has neither config.json nor delta_config.json; it is not a saved "
                                    "ChatRex model")
        settings: dict[str, Any] = {}  # what is not set here, the wrapper takes from what upn/ records
        cfg_path = root / PIPELINE_CONFIG
        if cfg_path.is_file() and not alone:
            try:
                stored = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"'{cfg_path}' is not valid JSON: {exc}") from exc
            unknown = set(stored) - set(PIPELINE_CONFIG_KEYS) if isinstance(stored, dict) else {"<not an object>"}
            if unknown:
                raise ValueError(f"'{cfg_path}' has unknown keys {sorted(unknown)}; expected {sorted(PIPELINE_CONFIG_KEYS)}")
            settings.update(stored)
        if upn_resize is not None:
            settings["upn_resize"] = upn_resize
        if upn_max_size is not _FROM_DIR:
            settings["upn_max_size"] = upn_max_size
        dev = resolve_device(device)
        torch_dtype = _resolve_dtype(dtype)
        filter_settings = {k: settings.pop(k) for k in ("min_score", "nms") if k in settings}
        upn_model = None if upn_dir is None else UPNWrapper(
            upn_dir, config=None, device=dev, precision=upn_precision, compile=upn_compile,
            **{k.removeprefix("upn_"): v for k, v in settings.items()})
        kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
        if official:  # streamed from the checkpoint straight onto the device (chatrex.mllm.official)
            model = ChatRexForConditionalGeneration.from_pretrained(
                mllm_dir, dtype=torch_dtype or _official_dtype(dev),
                **({"device_map": str(dev)} if dev.type != "cpu" else {})).eval()
        elif delta:  # trained weights stored as a delta over the installed base LLM (chatrex.mllm.delta)
            model, _ = load_delta(mllm_dir, dtype=torch_dtype or torch.float32)
            model = model.to(dev).eval()
        else:
            model = ChatRexForConditionalGeneration.from_pretrained(mllm_dir, **kwargs).to(dev).eval()
        processor = ChatRexProcessor.from_pretrained(mllm_dir)
        try:
            pipe = cls(upn_model, model, processor, generation_config=generation_config, generation=generation,
                       **filter_settings)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'{cfg_path}': {exc}") from None
        pipe.model_card = load_model_card(root)
        return pipe

    def save_pretrained(self, path: Union[str, os.PathLike]) -> None:
        """Write ``path/upn``, ``path/chatrex`` and ``path/pipeline_config.json`` (the UPN input size and the
        proposal filter) so that :meth:`from_pretrained` reads them back."""
        from chatrex.upn.checkpoint import save_pretrained as save_upn

        if self.upn is None:
            raise ValueError("this pipeline has no UPN to save")
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        save_upn(self.upn.model, self.upn.cfg, root / UPN_SUBDIR)
        self.model.save_pretrained(root / CHATREX_SUBDIR)
        self.processor.save_pretrained(root / CHATREX_SUBDIR)
        settings = {"upn_resize": int(self.upn.transform.size), "upn_max_size": self.upn.transform.max_size,
                    "min_score": self.min_score, "nms": self.nms}
        (root / PIPELINE_CONFIG).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    # -------------------------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        param = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        return param.dtype if param is not None else torch.float32

    def _build_generation_config(self, generation_config: Any):
        from transformers import GenerationConfig

        if generation_config is None:
            base = getattr(self.model, "generation_config", None)
            cfg = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
            cfg.update(**DEFAULT_GENERATION)
        elif isinstance(generation_config, GenerationConfig):
            cfg = GenerationConfig.from_dict(generation_config.to_dict())
        elif isinstance(generation_config, dict):
            cfg = GenerationConfig(**{**DEFAULT_GENERATION, **generation_config})
        else:
            raise TypeError(f"generation_config must be a GenerationConfig or dict, got {type(generation_config).__name__}")
        tok = self.tokenizer
        if cfg.eos_token_id is None and tok.eos_token_id is not None:
            cfg.eos_token_id = tok.eos_token_id
        if cfg.pad_token_id is None:
            cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cfg

    def _generation_args(self, gen_kwargs: dict) -> tuple[Any, dict]:
        """A copy of the generation config updated with ``gen_kwargs``; the kwargs it does not know go
        to ``generate`` as they are."""
        cfg = copy.deepcopy(self.generation_config)
        extra = cfg.update(**gen_kwargs)
        return cfg, extra

    def generate(self, inputs: dict[str, Any], generation_config: Any, streamer: Any = None,
                 stop: Optional[threading.Event] = None, **extra: Any) -> torch.Tensor:
        """Run the model on processor ``inputs`` with the pipeline's decoding backend (see the class).

        Args:
            inputs: the processor's output on the model's device.
            generation_config: a ``transformers.GenerationConfig``; ``extra``: more ``generate`` arguments.
            streamer: a transformers streamer. stop: set it to end the generation after the current step.
        Returns:
            (B, L + T) ids, as ``model.generate`` returns them.
        """
        from chatrex.mllm.fast_generation import StaticGenerator

        if self.generation != "default" and StaticGenerator.unsupported(generation_config, **extra) is None:
            if self._static_generator is None:
                self._static_generator = StaticGenerator(self.model, compile=self.generation == "compiled")
            return self._static_generator.generate(
                **inputs, generation_config=generation_config, streamer=streamer,
                should_stop=None if stop is None else stop.is_set, **extra)
        if stop is not None:
            from transformers import StoppingCriteriaList

            criteria = StoppingCriteriaList(extra.pop("stopping_criteria", None) or [])
            criteria.append(_StopGeneration(stop))
            extra["stopping_criteria"] = criteria
        with torch.inference_mode():
            return self.model.generate(**inputs, generation_config=generation_config, streamer=streamer, **extra)

    def _eos_ids(self, gen_kwargs: dict) -> set[int]:
        eos = gen_kwargs.get("eos_token_id", self.generation_config.eos_token_id)
        ids = set(_as_list(eos)) if eos is not None else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return {int(i) for i in ids if i is not None}

    def _prepare(
        self,
        images: Sequence[Any],
        questions: Sequence[str],
        boxes: Optional[Sequence[Any]],
        granularity: str,
        min_score: Optional[float],
        nms: Optional[float],
        max_boxes: int,
        regions: Optional[Sequence[Any]] = None,
    ) -> tuple[list, list[list[list[float]]], list[Optional[list[float]]], list[Optional[list]], list[Optional[list]]]:
        """Load images, get boxes (user regions, user boxes or UPN), check questions.

        Returns images, per image its boxes (pixels), UPN scores (or None), region entries with masks
        decoded (None: boxes only) and masks as RLE (None: boxes only)."""
        gran = _canonical_granularity(granularity)
        min_score = self.min_score if min_score is None else min_score
        nms = self.nms if nms is None else nms
        if not 0 < int(max_boxes) <= MAX_BOXES:
            raise ValueError(f"max_boxes must be in 1..{MAX_BOXES}, got {max_boxes}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        # each distinct input loaded once, so that repeats of one image stay one object (one UPN pass in
        # ``propose``, which groups by identity; evaluation asks several questions about one image)
        loaded: dict[int, Any] = {}
        for im in images:
            if id(im) not in loaded:
                loaded[id(im)] = load_image(im)
        pils = [loaded[id(im)] for im in images]
        box_lists: list[Optional[list[list[float]]]] = [None] * len(pils)
        score_lists: list[Optional[list[float]]] = [None] * len(pils)
        region_lists: list[Optional[list]] = [None] * len(pils)
        mask_lists: list[Optional[list]] = [None] * len(pils)
        if regions is not None:
            if boxes is not None:
                raise ValueError("pass boxes or regions, not both (regions may hold boxes and masks)")
            for i, r in enumerate(regions):
                if r is not None:
                    entries, box_lists[i], rles = validate_regions(r, pils[i].width, pils[i].height, max_boxes,
                                                                   f"image {i}")
                    if any(m is not None for m in rles):
                        region_lists[i], mask_lists[i] = entries, rles
        if boxes is not None:
            for i, b in enumerate(boxes):
                if b is not None:
                    box_lists[i] = validate_boxes(b, pils[i].width, pils[i].height, max_boxes, f"image {i}")
                    if getattr(self.processor, "official", False):  # the official input keeps boxes unclipped
                        box_lists[i] = [[float(v) for v in box] for box in (b.tolist() if hasattr(b, "tolist") else b)]
        need = [i for i, b in enumerate(box_lists) if b is None]
        if need:
            proposals = self.propose([pils[i] for i in need], gran, min_score, nms, max_boxes)
            for i, (bl, sl) in zip(need, proposals):
                box_lists[i], score_lists[i] = bl, sl
        for i, q in enumerate(questions):
            _check_question(q, f"image {i}", len(box_lists[i]))
        return pils, box_lists, score_lists, region_lists, mask_lists  # type: ignore[return-value]

    def propose(
        self,
        images: Sequence[ImageInput],
        granularity: str = "fine",
        min_score: Optional[float] = None,
        nms: Optional[float] = None,
        max_boxes: int = MAX_BOXES,
    ) -> list[tuple[list[list[float]], list[float]]]:
        """UPN proposals for ``images`` in one padded UPN pass, filtered as ``__call__`` filters them.

        Returns:
            per image ``(boxes, scores)``: at most ``max_boxes`` boxes ``[x0, y0, x1, y1]`` in original
            pixels, best first, and their scores.
        """
        gran = _canonical_granularity(granularity)
        min_score = self.min_score if min_score is None else min_score
        nms = self.nms if nms is None else nms
        if self.upn is None:
            raise ValueError("this pipeline has no UPN; pass boxes for every image")
        if not 0 < int(max_boxes) <= MAX_BOXES:
            raise ValueError(f"max_boxes must be in 1..{MAX_BOXES}, got {max_boxes}")
        if not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if not images:
            return []
        # one UPN pass per distinct image: evaluation asks several questions about one loaded image, and
        # passes the same object for each (the pass is the same, so its proposals are too)
        first: dict[int, int] = {}
        slot = [first.setdefault(id(im), len(first)) for im in images]
        distinct = list({id(im): im for im in images}.values())  # in the order of ``first``
        pils = [load_image(im) for im in distinct]
        props = self.upn.inference(pils, prompt_type=gran)
        kept = self.upn.filter(props, min_score=float(min_score), nms_value=float(nms))
        per_image = [([[float(v) for v in b] for b in kept["original_xyxy_boxes"][j][:max_boxes]],
                      [float(s) for s in kept["scores"][j][:max_boxes]]) for j in range(len(pils))]
        return [(list(per_image[j][0]), list(per_image[j][1])) for j in slot]

    def _inputs(self, pils: list, questions: list[str], box_lists: list,
                region_lists: Optional[list] = None) -> dict[str, Any]:
        if region_lists is not None and any(r is not None for r in region_lists):
            regions = [r if r is not None else b for r, b in zip(region_lists, box_lists)]
            inputs = self.processor(images=pils, questions=questions, regions=regions)
        else:
            inputs = self.processor(images=pils, questions=questions, boxes=box_lists)
        return batch_to(inputs, self.device, self.dtype)

    def _decode(self, new_ids: torch.Tensor, eos_ids: set[int]) -> str:
        ids = new_ids.tolist()
        for k, t in enumerate(ids):
            if t in eos_ids:
                ids = ids[:k]
                break
        pad = self.generation_config.pad_token_id
        while ids and pad is not None and ids[-1] == pad:
            ids.pop()
        return self._decode_ids(ids)

    def _decode_ids(self, ids: list[int]) -> str:
        """Text of ``ids`` with the ChatRex tokens kept (the processor drops bos/eos/pad/end-of-turn)."""
        decode = getattr(self.processor, "decode", None)
        if decode is not None:
            return decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # -------------------------------------------------------------------------------- running
    def __call__(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        questions: Union[str, Sequence[str]],
        boxes: Optional[Sequence[Any]] = None,
        granularity: str = "fine",
        min_score: Optional[float] = None,
        nms: Optional[float] = None,
        max_boxes: int = MAX_BOXES,
        batch_size: int = 4,
        on_answer: Optional[Callable[[], None]] = None,
        regions: Optional[Sequence[Any]] = None,
        **gen_kwargs: Any,
    ) -> list[PipelineResult]:
        """Answer ``questions`` about ``images``.

        Args:
            images: one image (path, PIL, array, tensor) or a list.
            questions: one question for all images, or one per image.
            boxes: user boxes in original pixels: for one image a list of ``[x0, y0, x1, y1]``; for a
                list of images a list (per image) of such lists, where ``None`` means "use the UPN".
                Images with boxes skip the UPN. At most ``max_boxes`` each.
            regions: instead of ``boxes``: user regions, each a box or a mask (an (H, W) binary array, COCO
                polygons ``[[x0, y0, x1, y1, x2, y2, ...]]`` or COCO RLE ``{"size": [H, W], "counts": ...}``),
                mixed; for a list of images one list (or None) per image. A mask is pooled inside its
                outline (mask pooling); its box in the result is its bounding box and ``result.masks``
                holds it as RLE.
            granularity: UPN prompt, ``"fine"`` (parts, small objects) or ``"coarse"`` (whole objects).
            min_score / nms: UPN filtering (score threshold, NMS IoU); default the pipeline's
                (``pipeline_config.json``, else the official 0.3 / 0.8).
            max_boxes: the highest-scoring proposals kept (≤ 100).
            batch_size: images per UPN pass and per ``generate`` call.
            on_answer: called once per answer as soon as it has ended (its EOS, or the token limit), also
                within a batch: e.g. to move a progress bar per sample.
            **gen_kwargs: passed to ``model.generate`` (e.g. ``max_new_tokens``), over the pipeline's
                generation config.

        Returns:
            one :class:`PipelineResult` per image, in order.

        Raises:
            ImageLoadError: an unreadable image. ValueError: mismatched counts, bad boxes, bad masks
                (empty, wrong size, not binary, malformed RLE), a bad granularity, a question referring to
                a box index that does not exist.
        """
        single = not isinstance(images, (list, tuple))
        image_list = [images] if single else list(images)
        if not image_list:
            raise ValueError("no images given")
        question_list = [questions] * len(image_list) if isinstance(questions, str) else list(questions)
        if len(question_list) != len(image_list):
            raise ValueError(f"got {len(image_list)} images but {len(question_list)} questions")
        if boxes is not None:
            boxes = [boxes] if single else list(boxes)
            if len(boxes) != len(image_list):
                raise ValueError(f"got {len(image_list)} images but boxes for {len(boxes)}")
        if regions is not None:
            if boxes is not None:
                raise ValueError("pass boxes or regions, not both (regions may hold boxes and masks)")
            regions = [regions] if single else list(regions)
            if len(regions) != len(image_list):
                raise ValueError(f"got {len(image_list)} images but regions for {len(regions)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        results: list[PipelineResult] = []
        eos_ids = self._eos_ids(gen_kwargs)
        for start in range(0, len(image_list), int(batch_size)):
            stop = start + int(batch_size)
            chunk_boxes = None if boxes is None else boxes[start:stop]
            chunk_regions = None if regions is None else regions[start:stop]
            pils, box_lists, score_lists, region_lists, mask_lists = self._prepare(
                image_list[start:stop], question_list[start:stop], chunk_boxes, granularity, min_score, nms, max_boxes,
                chunk_regions,
            )
            inputs = self._inputs(pils, question_list[start:stop], box_lists, region_lists)
            gen_cfg, extra = self._generation_args(gen_kwargs)
            if on_answer is not None:
                extra["streamer"] = _AnswerCounter(len(pils), eos_ids, on_answer)
            out = self.generate(inputs, gen_cfg, **extra)
            new_tokens = _new_tokens(out, inputs["input_ids"])
            for row, bl, sl, ml in zip(new_tokens, box_lists, score_lists, mask_lists):
                raw = self._decode(row, eos_ids)
                results.append(PipelineResult(parse_grounded(raw, num_boxes=len(bl)), raw, bl, sl, ml))
        return results

    def stream(
        self,
        image: ImageInput,
        question: str,
        boxes: Optional[Boxes] = None,
        granularity: str = "fine",
        min_score: Optional[float] = None,
        nms: Optional[float] = None,
        max_boxes: int = MAX_BOXES,
        regions: Optional[Sequence[Any]] = None,
        **gen_kwargs: Any,
    ) -> StreamingAnswer:
        """Like ``__call__`` for one image, but returns at once: iterate the :class:`StreamingAnswer` for
        text pieces as they are generated, then call ``.result()`` for the parsed answer."""
        pils, box_lists, score_lists, region_lists, mask_lists = self._prepare(
            [image], [question], None if boxes is None else [boxes], granularity, min_score, nms, max_boxes,
            None if regions is None else [regions],
        )
        inputs = self._inputs(pils, [question], box_lists, region_lists)
        drop = set(getattr(self.processor, "special_ids", set()))
        streamer = _AnswerStreamer(self.tokenizer, drop, self._eos_ids(gen_kwargs))
        errors: list[BaseException] = []
        stop = threading.Event()
        gen_cfg, extra = self._generation_args(gen_kwargs)

        def run() -> None:
            try:
                self.generate(inputs, gen_cfg, streamer=streamer, stop=stop, **extra)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="chatrex-generate", daemon=True)
        thread.start()
        return StreamingAnswer(streamer, thread, errors, box_lists[0], score_lists[0], stop=stop, decode=self._decode_ids,
                               masks=mask_lists[0])


class _AnswerCounter:
    """A transformers streamer that calls ``on_answer()`` once for each row of a batch when that row's answer
    ends: at its first EOS id, or, for rows still going, when generation ends."""

    def __init__(self, rows: int, eos_ids: set[int], on_answer: Callable[[], None]) -> None:
        self.ended = [False] * rows
        self.eos_ids = eos_ids
        self.on_answer = on_answer
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call hands over the prompt
            self.seen_prompt = True
            return
        for row, token in enumerate(value.reshape(len(self.ended), -1)[:, -1].tolist()):
            if not self.ended[row] and int(token) in self.eos_ids:
                self.ended[row] = True
                self.on_answer()

    def end(self) -> None:
        for row, ended in enumerate(self.ended):
            if not ended:
                self.ended[row] = True
                self.on_answer()


def _new_tokens(output: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """The generated part of ``generate``'s output (decoder-only models return prompt + new tokens)."""
    seqs = output.sequences if hasattr(output, "sequences") else output
    plen = input_ids.shape[-1]
    if seqs.shape[-1] >= plen and torch.equal(seqs[:, :plen].to(input_ids.device), input_ids):
        return seqs[:, plen:]
    return seqs


def _official_dtype(device: torch.device) -> torch.dtype:
    """An official checkpoint's default dtype: bfloat16 on GPUs that have it, float16 on other GPUs, float32
    elsewhere."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {', '.join(names)}; got {dtype!r}")
    return names[dtype]
