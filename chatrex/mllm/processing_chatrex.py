"""ChatRexProcessor: images + boxes + questions (+ answers) → model inputs.

Prompt (user turn, wrapped in the tokenizer's chat template with ``add_generation_prompt=True``)::

    <image>
    <obj0><objfeat><obj1><objfeat>…<objK-1><objfeat>
    {question}

(the object line is left out when there are no boxes). In the token ids, ``<image>`` is repeated g² times
(576 at full size) — one placeholder per image token — and each ``<objfeat>`` is one placeholder for one
box's object token. Images are padded to a centred square (see :mod:`chatrex.mllm.image_processing`).

For training, ``answers=`` appends the assistant turn and builds ``labels``: -100 everywhere except the
answer tokens and the end-of-turn token that closes them.

``input_mode="official"`` (what :meth:`ChatRexProcessor.from_pretrained` picks for an official RexSeek /
ChatRex folder) builds the inputs as the official code does: its image preprocessing
(:mod:`chatrex.mllm.image_processing`), unclipped boxes, the prompt ``<image>\n<obj0><objfeat>…\n{question}``
in the checkpoint's fixed chat format (``prompt_template``: Qwen2 ``<|im_start|>user …``, Vicuna
``USER: … ASSISTANT:``; official tokenizers carry no chat template), and its tokenisation: the tokenizer's
bos (if it has one), then each piece between the placeholders encoded on its own. The placeholders get the
ids ``image_token_id`` (g² times) and ``objfeat_token_id`` given to the processor (the model config's).
An answer there is its tokens followed by eos (the official training format), all of them labelled.

Regions may also be masks: ``regions=`` (instead of ``boxes=``) takes, per image, a list mixing boxes and
masks (binary arrays, COCO polygons, COCO RLE; :mod:`chatrex.mllm.regions`). Each region still takes
one ``<objfeat>``; a mask region's box is its bounding box, and the output gains ``region_masks`` (B
tensors (M_i, G, G), G = ``mask_size``) and ``region_mask_indices`` (B tensors (M_i,)) when any region
of the batch is a mask. Without masks the output is exactly that of ``boxes=``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import torch
from transformers import AutoTokenizer, BatchFeature

from chatrex.mllm.image_processing import (
    CLIP_MEAN,
    CLIP_STD,
    INPUT_MODES,
    ChatRexImageProcessor,
    SquareFrame,
    denormalize_boxes,
    normalize_boxes,
)
from chatrex.mllm.regions import prepare_regions
from chatrex.mllm.tokens import IMAGE_TOKEN, MAX_OBJECTS, OBJFEAT_TOKEN, chatrex_token_ids, obj_token

PROCESSOR_FILE = "processor_config.json"
MAX_BOXES_POLICIES = ("error", "topk")
_PLACEHOLDER_SPLIT = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(OBJFEAT_TOKEN)})")


def select_boxes(num_boxes: int, scores: Sequence[float] | None = None, max_boxes: int = MAX_OBJECTS,
                 policy: str = "error", what: str = "the image") -> list[int]:
    """Indices of the boxes to keep (in their original order).

    ``policy="error"``: more than ``max_boxes`` boxes raise ``ValueError``. ``policy="topk"``: keep the
    ``max_boxes`` highest-scoring boxes when ``scores`` are given, else the first ``max_boxes``.
    """
    if policy not in MAX_BOXES_POLICIES:
        raise ValueError(f"max_boxes_policy must be one of {MAX_BOXES_POLICIES}; got '{policy}'")
    if scores is not None and len(scores) != num_boxes:
        raise ValueError(f"{what} has {num_boxes} boxes but {len(scores)} scores")
    if num_boxes <= max_boxes:
        return list(range(num_boxes))
    if policy == "error":
        raise ValueError(
            f"{what} has {num_boxes} boxes but ChatRex takes at most {max_boxes} (<obj0>…<obj{max_boxes - 1}>); "
            "pass fewer boxes or max_boxes_policy='topk'"
        )
    if scores is None:
        return list(range(max_boxes))
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    order = torch.sort(-s, stable=True).indices[:max_boxes]
    return sorted(order.tolist())


class ChatRexProcessor:
    """Turns (image, boxes, question[, answer]) into ``input_ids``, ``attention_mask``, ``pixel_values``,
    ``pixel_values_aux``, ``boxes`` (and ``labels``).

    Args:
        tokenizer: a tokenizer with a chat template and the ChatRex tokens
            (:func:`chatrex.mllm.tokens.add_chatrex_tokens`).
        image_processor: a :class:`ChatRexImageProcessor`; built from the size/mean/std arguments if omitted.
        patch_size: CLIP patch size; ``<image>`` stands for ``(image_size // patch_size)²`` tokens.
        image_token_pool: the model's ``config.image_token_pool``; ``<image>`` then stands for
            ``(image_size // patch_size // image_token_pool)²`` tokens.
        max_boxes / max_boxes_policy: see :func:`select_boxes`.
        input_mode: ``"chatrex"`` (ours) or ``"official"`` (the official code's inputs, see the module
            docstring); the image processor must be in the same mode.
        prompt_template: official mode: the user turn with ``{input}`` where the prompt goes.
        image_token_id / objfeat_token_id: official mode: the placeholder ids the model expects
            (``config.image_token_id`` / ``objfeat_token_id``).
        mask_size: G, the side of the grid mask regions are resized to (default ``image_size_aux // 4``,
            the ConvNeXt's stride-4 map; the model resizes them on to each feature level).
    """

    def __init__(
        self,
        tokenizer,
        image_processor: ChatRexImageProcessor | None = None,
        *,
        image_size: int = 336,
        image_size_aux: int = 768,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        image_mean_aux: Sequence[float] | None = None,
        image_std_aux: Sequence[float] | None = None,
        patch_size: int = 14,
        max_boxes: int = MAX_OBJECTS,
        max_boxes_policy: str = "error",
        input_mode: str = "chatrex",
        prompt_template: str | None = None,
        image_token_id: int | None = None,
        objfeat_token_id: int | None = None,
        mask_size: int | None = None,
        image_token_pool: int = 1,
    ):
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}; got {input_mode!r}")
        self.input_mode = input_mode
        self.tokenizer = tokenizer
        self.image_processor = image_processor or ChatRexImageProcessor(
            image_size, image_size_aux, image_mean, image_std, image_mean_aux, image_std_aux, input_mode=input_mode
        )
        if self.image_processor.input_mode != input_mode:
            raise ValueError(f"the processor's input_mode is {input_mode!r} but its image processor's is "
                             f"{self.image_processor.input_mode!r}")
        self.patch_size = int(patch_size)
        if self.image_processor.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_processor.image_size} is not a multiple of patch_size {patch_size}")
        grid = self.image_processor.image_size // self.patch_size
        if isinstance(image_token_pool, bool) or int(image_token_pool) != image_token_pool or image_token_pool < 1 \
                or grid % int(image_token_pool):
            raise ValueError(f"image_token_pool must be a positive integer that divides the image grid ({grid}), "
                             f"got {image_token_pool!r}")
        self.image_token_pool = int(image_token_pool)
        if not 1 <= max_boxes <= MAX_OBJECTS:
            raise ValueError(f"max_boxes must be in [1, {MAX_OBJECTS}]; got {max_boxes}")
        if max_boxes_policy not in MAX_BOXES_POLICIES:
            raise ValueError(f"max_boxes_policy must be one of {MAX_BOXES_POLICIES}; got '{max_boxes_policy}'")
        self.max_boxes = int(max_boxes)
        self.max_boxes_policy = max_boxes_policy
        self._mask_size = None if mask_size is None else int(mask_size)
        if self.mask_size < 1:
            raise ValueError(f"mask_size must be a positive number of cells, got {self.mask_size}")
        self.prompt_template = prompt_template
        if self.official:
            if not isinstance(prompt_template, str) or "{input}" not in prompt_template:
                raise ValueError("the official input mode needs a prompt_template with '{input}' in it; got "
                                 f"{prompt_template!r}")
            if image_token_id is None or objfeat_token_id is None or image_token_id == objfeat_token_id:
                raise ValueError("the official input mode needs two different placeholder ids, image_token_id and "
                                 f"objfeat_token_id (the model config's); got {image_token_id}, {objfeat_token_id}")
            self.token_ids = chatrex_token_ids(tokenizer, placeholders=False)
            self.image_token_id, self.objfeat_token_id = int(image_token_id), int(objfeat_token_id)
        else:
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError("the tokenizer has no chat_template; set tokenizer.chat_template before building the processor")
            self.token_ids = chatrex_token_ids(tokenizer)
            self.image_token_id = self.token_ids[IMAGE_TOKEN]
            self.objfeat_token_id = self.token_ids[OBJFEAT_TOKEN]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        self.pad_token_id = int(pad)

    # ------------------------------------------------------------------ sizes
    @property
    def official(self) -> bool:
        return self.input_mode == "official"

    @property
    def mask_size(self) -> int:
        """G: mask regions reach the model on a G x G grid of the padded square."""
        return self._mask_size if self._mask_size is not None else max(1, self.image_processor.image_size_aux // 4)

    @property
    def num_image_tokens(self) -> int:
        """Tokens one ``<image>`` expands to: (image_size / patch_size / image_token_pool)²."""
        return (self.image_processor.image_size // self.patch_size // self.image_token_pool) ** 2

    @property
    def special_ids(self) -> set[int]:
        """Ids of special tokens other than the ChatRex ones (bos, eos, pad, end-of-turn, …)."""
        tok = self.tokenizer
        ids = set(int(i) for i in tok.all_special_ids)
        ids |= {int(i) for i, t in tok.added_tokens_decoder.items() if getattr(t, "special", False)}
        return ids - set(self.token_ids.values())

    # ------------------------------------------------------------------ text
    @staticmethod
    def build_user_text(question: str, num_boxes: int) -> str:
        """``<image>\\n<obj0><objfeat>…\\n{question}`` (no object line when ``num_boxes`` is 0)."""
        if not isinstance(question, str):
            raise ValueError(f"question must be a string; got {type(question).__name__}")
        if num_boxes == 0:
            return f"{IMAGE_TOKEN}\n{question}"
        objs = "".join(f"{obj_token(k)}{OBJFEAT_TOKEN}" for k in range(num_boxes))
        return f"{IMAGE_TOKEN}\n{objs}\n{question}"

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _expand_image(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for i in ids:
            out.extend([i] * self.num_image_tokens if i == self.image_token_id else [i])
        return out

    def official_user_text(self, question: str, num_boxes: int) -> str:
        """The official prompt: ``<image>\n<obj0><objfeat>…\n{question}`` (``<image>\n\n{question}`` without
        boxes); ``<image>`` in the question is dropped, as the official code does."""
        if not isinstance(question, str):
            raise ValueError(f"question must be a string; got {type(question).__name__}")
        objs = "".join(f"{obj_token(k)}{OBJFEAT_TOKEN}" for k in range(num_boxes))
        return f"{IMAGE_TOKEN}\n{objs}\n{question.replace(IMAGE_TOKEN, '')}"

    def encode_official(self, question: str, num_boxes: int) -> list[int]:
        """Token ids of the official prompt, tokenised as the official code does (bos, then each piece
        between placeholders on its own), with the placeholders as this processor's ids (``<image>`` g² times)."""
        prompt = self.prompt_template.format(input=self.official_user_text(question, num_boxes), round=1)
        bos = self.tokenizer.bos_token_id
        ids: list[int] = [] if bos is None else [int(bos)]
        for piece in _PLACEHOLDER_SPLIT.split(prompt):
            if piece == IMAGE_TOKEN:
                ids.extend([self.image_token_id] * self.num_image_tokens)
            elif piece == OBJFEAT_TOKEN:
                ids.append(self.objfeat_token_id)
            elif piece:
                ids.extend(self.tokenizer.encode(piece, add_special_tokens=False))
        return ids

    def encode_text(self, question: str, num_boxes: int, answer: str | None = None) -> tuple[list[int], list[int] | None]:
        """Token ids (with ``<image>`` expanded) and, when ``answer`` is given, labels."""
        if self.official:  # the answer as the official training data has it: its tokens, then eos
            ids = self.encode_official(question, num_boxes)
            if answer is None:
                return ids, None
            if not isinstance(answer, str):
                raise ValueError(f"answer must be a string; got {type(answer).__name__}")
            eos = self.tokenizer.eos_token_id
            target = list(self.tokenizer.encode(answer, add_special_tokens=False)) + ([] if eos is None else [int(eos)])
            return ids + target, [-100] * len(ids) + target
        user = {"role": "user", "content": self.build_user_text(question, num_boxes)}
        prompt = self._template([user], add_generation_prompt=True)
        if answer is None:
            return self._expand_image(self._ids(prompt)), None
        if not isinstance(answer, str):
            raise ValueError(f"answer must be a string; got {type(answer).__name__}")
        full = self._template([user, {"role": "assistant", "content": answer}], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the user turn differently with and without the answer; "
                             "cannot find where the answer starts")
        rest = full[len(prompt):]
        pos = rest.find(answer)
        if pos < 0:
            raise ValueError("the chat template changed the answer text; cannot locate it to build labels")
        head = self._ids(prompt + rest[:pos])
        ans = self._ids(answer)
        tail = self._ids(rest[pos + len(answer):])
        special = self.special_ids
        n_tail_labelled = 0
        for j, t in enumerate(tail):
            if t in special:
                n_tail_labelled = j + 1  # answer → end-of-turn token (inclusive)
                break
        ids = head + ans + tail
        labels = [-100] * len(head) + ans + tail[:n_tail_labelled] + [-100] * (len(tail) - n_tail_labelled)
        # expand <image> in both (labels there are -100 anyway)
        exp_ids, exp_labels = [], []
        for i, l in zip(ids, labels):
            n = self.num_image_tokens if i == self.image_token_id else 1
            exp_ids.extend([i] * n)
            exp_labels.extend([l if n == 1 else -100] * n)
        return exp_ids, exp_labels

    # ------------------------------------------------------------------ main entry points
    def __call__(
        self,
        images: Sequence[Any],
        questions: Sequence[str],
        boxes: Sequence[Any] | None = None,
        answers: Sequence[str] | None = None,
        scores: Sequence[Sequence[float] | None] | None = None,
        padding_side: str | None = None,
        max_boxes_policy: str | None = None,
        return_frames: bool = False,
        normalize_images: bool = True,
        regions: Sequence[Any] | None = None,
    ) -> BatchFeature:
        """Batch of B (image, question, boxes[, answer]).

        Args:
            images: B images (paths, PIL, arrays — anything :func:`chatrex.utils.image.load_image` takes).
            questions: B strings.
            boxes: B lists of ``[x0, y0, x1, y1]`` in original-image pixels (or None for no boxes).
            regions: instead of ``boxes``: B lists (or None) of regions, each a box or a mask
                (:mod:`chatrex.mllm.regions`); adds ``region_masks`` and ``region_mask_indices`` when any
                is a mask.
            answers: B strings for training (adds ``labels``).
            scores: per image, box scores for ``max_boxes_policy="topk"``.
            padding_side: "left" (default for generation) or "right" (default when ``answers`` are given).
            normalize_images: False returns uint8 pixels, to be normalised later with
                ``image_processor.normalize`` (training does this on the GPU).
            return_frames: also return ``frames`` (list of :class:`SquareFrame`) and ``kept_boxes`` (indices
                of the boxes kept per image) — do not pass those two to the model.
        Returns:
            ``BatchFeature`` with ``input_ids`` (B, L), ``attention_mask`` (B, L), ``pixel_values``
            (B, 3, 336, 336), ``pixel_values_aux`` (B, 3, 768, 768), ``boxes`` (B tensors (K_i, 4), xyxy in
            [0, 1] of the padded square), with answers ``labels`` (B, L), and with mask regions
            ``region_masks`` (B tensors (M_i, G, G)) and ``region_mask_indices`` (B tensors (M_i,)).
        """
        if isinstance(questions, str):
            raise ValueError("questions must be a list of strings (one per image); use process() for one image")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        n = len(images)
        if len(questions) != n:
            raise ValueError(f"got {n} images but {len(questions)} questions")
        if regions is not None:
            if boxes is not None:
                raise ValueError("pass boxes or regions, not both (regions may hold boxes and masks)")
            regions = list(regions)
            if len(regions) != n:
                raise ValueError(f"got {n} images but {len(regions)} region lists")
        boxes = list(boxes) if boxes is not None else [None] * n
        if len(boxes) != n:
            raise ValueError(f"got {n} images but {len(boxes)} box lists")
        if answers is not None and len(answers) != n:
            raise ValueError(f"got {n} images but {len(answers)} answers")
        scores = list(scores) if scores is not None else [None] * n
        if len(scores) != n:
            raise ValueError(f"got {n} images but {len(scores)} score lists")
        policy = max_boxes_policy or self.max_boxes_policy
        side = padding_side or ("right" if answers is not None else "left")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right'; got '{side}'")

        vision = self.image_processor(images, normalize=normalize_images)
        frames: list[SquareFrame] = vision["frames"]
        box_tensors, kept, seqs, labs, masks, mask_indices = [], [], [], [], [], []
        for i in range(n):
            what = f"image {i}"
            if regions is not None:
                prepared = prepare_regions(regions[i], frames[i], self.mask_size, what)
                b = prepared.boxes
            else:
                try:
                    b = normalize_boxes(boxes[i], frames[i], clip=not self.official)
                except ValueError as err:
                    raise ValueError(f"{what}: {err}") from None
            keep = select_boxes(b.shape[0], scores[i], self.max_boxes, policy, what)
            b = b[keep]
            if regions is not None:
                position = torch.full((prepared.boxes.shape[0],), -1, dtype=torch.long)
                position[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
                new_index = position[prepared.mask_indices]
                masks.append(prepared.masks[new_index >= 0])
                mask_indices.append(new_index[new_index >= 0])
            ids, lab = self.encode_text(questions[i], b.shape[0], None if answers is None else answers[i])
            box_tensors.append(b)
            kept.append(keep)
            seqs.append(ids)
            labs.append(lab)

        length = max(len(s) for s in seqs)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), -100, dtype=torch.long) if answers is not None else None
        for i, s in enumerate(seqs):
            sl = slice(length - len(s), length) if side == "left" else slice(0, len(s))
            input_ids[i, sl] = torch.tensor(s, dtype=torch.long)
            attention[i, sl] = 1
            if labels is not None:
                labels[i, sl] = torch.tensor(labs[i], dtype=torch.long)
        data: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "pixel_values": vision["pixel_values"],
            "pixel_values_aux": vision["pixel_values_aux"],
            "boxes": box_tensors,
        }
        if labels is not None:
            data["labels"] = labels
        if any(m.shape[0] for m in masks):
            data["region_masks"] = masks
            data["region_mask_indices"] = mask_indices
        if return_frames:
            data["frames"] = frames
            data["kept_boxes"] = kept
        return BatchFeature(data=data)

    def process(self, image: Any, question: str, bbox: Any = None, answer: str | None = None,
                scores: Sequence[float] | None = None, regions: Sequence[Any] | None = None,
                **kwargs: Any) -> BatchFeature:
        """Single-image form of the official API: ``process(image=..., question=..., bbox=[[x0,y0,x1,y1], ...])``;
        ``regions=[...]`` instead of ``bbox`` takes boxes and masks."""
        if regions is not None:
            if bbox is not None:
                raise ValueError("pass bbox or regions, not both (regions may hold boxes and masks)")
            kwargs["regions"] = [regions]
        return self(
            [image], [question], None if regions is not None else [bbox], None if answer is None else [answer],
            None if scores is None else [scores], **kwargs,
        )

    # ------------------------------------------------------------------ boxes & decoding
    def normalize_boxes(self, boxes: Any, frame: SquareFrame) -> torch.Tensor:
        return normalize_boxes(boxes, frame, clip=not self.official)

    def denormalize_boxes(self, boxes_norm: Any, frame: SquareFrame) -> torch.Tensor:
        return denormalize_boxes(boxes_norm, frame)

    def decode(self, ids: Any, keep_chatrex_tokens: bool = True) -> str:
        """Text of ``ids``; drops bos/eos/pad/end-of-turn but keeps ``<ground>``, ``<objK>``, … (for the parser)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if not keep_chatrex_tokens:
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        drop = self.special_ids
        return self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)

    def batch_decode(self, sequences: Any, keep_chatrex_tokens: bool = True) -> list[str]:
        return [self.decode(s, keep_chatrex_tokens) for s in sequences]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = {"processor_class": "ChatRexProcessor", "patch_size": self.patch_size, "max_boxes": self.max_boxes,
             "max_boxes_policy": self.max_boxes_policy}
        if self.image_token_pool != 1:
            d["image_token_pool"] = self.image_token_pool
        if self.official:
            d.update(input_mode=self.input_mode, prompt_template=self.prompt_template,
                     image_token_id=self.image_token_id, objfeat_token_id=self.objfeat_token_id)
        return d

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        os.makedirs(folder, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        with open(os.path.join(folder, PROCESSOR_FILE), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> "ChatRexProcessor":
        """Load a processor saved with :meth:`save_pretrained`, or build the official one for an official
        RexSeek / ChatRex folder (:meth:`from_official`)."""
        from chatrex.mllm.official import is_official_dir

        folder = os.fspath(folder)
        path = os.path.join(folder, PROCESSOR_FILE)
        if not os.path.isfile(path) and is_official_dir(folder):
            return cls.from_official(folder, **kwargs)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {PROCESSOR_FILE} in '{folder}'; was it saved with ChatRexProcessor.save_pretrained?")
        with open(path) as f:
            cfg = json.load(f)
        cfg.pop("processor_class", None)
        cfg.update(kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(tokenizer, ChatRexImageProcessor.from_pretrained(folder), **cfg)

    @classmethod
    def from_official(cls, folder: str | os.PathLike, **kwargs: Any) -> "ChatRexProcessor":
        """The official input path for an official checkpoint folder: its tokenizer, the CLIP processor's
        mean/std (from ``mm_vision_tower``'s ``preprocessor_config.json`` when it is a local folder, else
        OpenAI CLIP's), the model's image sizes and placeholder ids, and the prompt format of its LLM family.

        Raises:
            chatrex.mllm.official.OfficialCheckpointError: the folder's config cannot be converted.
        """
        from chatrex.mllm.configuration_chatrex import ChatRexConfig
        from chatrex.mllm.official import (
            OFFICIAL_PROMPT_TEMPLATES,
            OPENAI_CLIP_MEAN,
            OPENAI_CLIP_STD,
            OfficialCheckpointError,
            read_config_dict,
            resolve_clip_tower,
        )

        folder = os.fspath(folder)
        config = ChatRexConfig.from_pretrained(folder)
        _, clip_dir = resolve_clip_tower(str(read_config_dict(folder)["mm_vision_tower"]), folder)
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        pre = None if clip_dir is None else clip_dir / "preprocessor_config.json"
        if pre is not None and pre.is_file():
            stored = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = stored.get("image_mean", mean), stored.get("image_std", std)
            if stored.get("resample", 3) != 3:
                raise OfficialCheckpointError(f"'{pre}' resizes with resample={stored['resample']}; the official "
                                              "input is bicubic (3)")
        image_processor = ChatRexImageProcessor(config.image_size, config.image_size_aux, mean, std,
                                                input_mode="official")
        settings = dict(patch_size=int(config.vision_config.patch_size), max_boxes=config.max_boxes,
                        input_mode="official", prompt_template=OFFICIAL_PROMPT_TEMPLATES[config.text_config.model_type],
                        image_token_id=config.image_token_id, objfeat_token_id=config.objfeat_token_id)
        settings.update(kwargs)
        return cls(AutoTokenizer.from_pretrained(folder), image_processor, **settings)


__all__ = ["ChatRexProcessor", "select_boxes", "MAX_BOXES_POLICIES"]
