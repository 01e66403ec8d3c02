"""Stage 0: pretraining ChatRex's two vision towers on the records' annotations.

The paper starts from pretrained towers (CLIP ViT, ConvNeXt); none can be downloaded here, and with the
LLM's loss alone towers trained from scratch learn too slowly to tell object tokens apart. This stage
gives them direct, dense supervision (``chatrex.data.vision_dataset``):

* the **object feature** of each box (exactly what ChatRex's object encoder computes: multi-level RoIAlign
  plus the sine box embedding) is classified into category (or background) and attributes;
* every **image token** of each tower is classified into the category under it.

Only the towers are kept: stage 1 loads them with ``vision_init`` (:func:`load_pretrained_towers`); the
heads are exported beside them so that the stage-0 model itself can be reloaded and checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from chatrex.data.vision_dataset import (
    IGNORE,
    VisionDataConfig,
    VisionPretrainDataset,
    VisionVocabulary,
    collate_vision,
)
from chatrex.mllm.configuration_chatrex import ChatRexConfig
from chatrex.mllm.modeling_chatrex import object_trunk
from chatrex.mllm.object_encoder import encode_objects
from chatrex.mllm.vision_towers import CLIPVisionTower, ConvNeXtTower, ConvNeXtTowerConfig
from chatrex.training.task import default_param_groups

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "vision_pretrain_config.json"
TOWER_PREFIXES = ("vision_tower.", "vision_tower_aux.")


@dataclass
class VisionTaskConfig:
    """Attributes:
        vision: overrides of the ChatRex config's vision side, applied over ``chatrex_small`` (the same
            dict as a ChatRex stage's ``task.vision``, so that the towers fit it).
        data: see :class:`~chatrex.data.vision_dataset.VisionDataConfig`.
        head_dim: width of the object head's hidden layer.
        attribute_weight: weight of the mean attribute loss (the category loss has weight 1).
        dense_weight: weight of the mean per-token loss of the two towers.
        init_from: a stage-0 export (towers and heads) to start from instead of random weights, with a
            fresh optimizer and schedule: how stage 0 goes on from an earlier run's export when only that
            export was kept. Its config and vocabulary must match this task's.
    """

    vision: dict[str, Any] = field(default_factory=dict)
    data: VisionDataConfig = field(default_factory=VisionDataConfig)
    head_dim: int = 512
    attribute_weight: float = 0.5
    dense_weight: float = 1.0
    init_from: Optional[str] = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionTaskConfig":
        d = dict(d)
        d.pop("type", None)
        return cls(data=VisionDataConfig(**d.pop("data", {})), **d)


def vision_config(overrides: dict[str, Any]) -> ChatRexConfig:
    """``chatrex_small`` with ``overrides`` applied (its text side is not used here)."""
    from chatrex.mllm.presets import chatrex_small, with_overrides

    return with_overrides(chatrex_small(), overrides)


def vision_overrides(config: ChatRexConfig) -> dict[str, Any]:
    """The vision side of ``config`` as a ``task.vision`` dict: :func:`vision_config` of it gives it back."""
    out = {"vision_config": config.vision_config.to_dict(), "aux_vision_config": config.aux_vision_config,
           "vision_feature_layer": config.vision_feature_layer, "roi_output_size": config.roi_output_size}
    if config.roi_aligned:  # written only when set: exports of the official layout stay as they were
        out["roi_aligned"] = True
    return out


class VisionPretrainModel(nn.Module):
    """The two towers (named as in ``ChatRexForConditionalGeneration``) plus training heads.

    ``forward(pixel_values (B,3,S,S), pixel_values_aux (B,3,S',S'), boxes [B x (K_i,4)], region_masks=None,
    region_mask_indices=None)`` returns ``dense_clip`` / ``dense_convnext`` (B, g², C) category logits per
    image token, and per box (sum K_i rows) ``category`` (sum K, C) and one (sum K, V_a) tensor per
    attribute. Region masks (as ChatRex takes them) make those boxes mask-pooled.
    """

    def __init__(self, config: ChatRexConfig, vocabulary: VisionVocabulary, head_dim: int = 512) -> None:
        super().__init__()
        self.config = config
        self.vocabulary = vocabulary
        self.vision_tower = CLIPVisionTower(config.vision_config, feature_layer=config.vision_feature_layer)
        self.vision_tower_aux = ConvNeXtTower(ConvNeXtTowerConfig.from_dict(config.aux_vision_config))
        n_cat = len(vocabulary.categories)
        self.dense_clip = nn.Linear(int(config.vision_config.hidden_size), n_cat)
        self.dense_convnext = nn.Linear(int(config.aux_vision_config["dims"][-1]), n_cat)
        self.object_trunk = object_trunk(config.object_feature_dim, head_dim)
        heads = {"category": nn.Linear(head_dim, n_cat)}
        heads.update({name: nn.Linear(head_dim, len(values)) for name, values in vocabulary.attributes.items()})
        self.object_heads = nn.ModuleDict(heads)

    def forward(self, pixel_values: torch.Tensor, pixel_values_aux: torch.Tensor,
                boxes: list[torch.Tensor], region_masks: Optional[list[torch.Tensor]] = None,
                region_mask_indices: Optional[list[torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        clip_tokens = self.vision_tower(pixel_values)  # (B, g², C_clip)
        levels = self.vision_tower_aux(pixel_values_aux)
        last = levels[-1].flatten(2).transpose(1, 2)  # (B, g², C_last), row-major like the ViT patches
        out = {"dense_clip": self.dense_clip(clip_tokens), "dense_convnext": self.dense_convnext(last)}
        feats = encode_objects(levels, boxes, self.config.image_size_aux, self.config.roi_output_size,
                               masks=region_masks, mask_indices=region_mask_indices, aligned=self.config.roi_aligned)
        hidden = self.object_trunk(feats.to(self.object_trunk[0].weight.dtype))
        out.update({name: head(hidden) for name, head in self.object_heads.items()})
        return out


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of the labelled rows (``labels`` != IGNORE) that ``logits`` gets right, as a 0-d tensor
    (NaN without any labelled row; nothing is copied to the host)."""
    valid = (labels != IGNORE).float()
    hits = (logits.argmax(-1) == labels).float() * valid
    return hits.sum() / valid.sum()


def vision_losses(out: dict[str, torch.Tensor], batch: dict[str, Any], cfg: VisionTaskConfig,
                  attributes: list[str], labelled: Optional[dict[str, bool]] = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Category + weighted attribute + weighted dense cross-entropies, and accuracies to log (0-d
    tensors; an accuracy with nothing to score is left out).

    ``batch`` holds ``category`` (sum K,), one (sum K,) label tensor per attribute (``IGNORE`` where
    unknown), ``dense`` (B, g²) and ``is_region`` (sum K,) bools. ``labelled`` says which attributes,
    and whether regions and background boxes, have any label in the batch (counted from ``batch`` when
    not given, which on a GPU waits for it).
    """
    if labelled is None:
        labelled = batch_labelled(batch, attributes)
    logs: dict[str, torch.Tensor] = {}
    loss_cat = F.cross_entropy(out["category"].float(), batch["category"])
    attr_losses = []
    for name in attributes:
        labels = batch[name]
        if labelled[name]:
            attr_losses.append(F.cross_entropy(out[name].float(), labels, ignore_index=IGNORE))
            logs[f"acc_{name}"] = _accuracy(out[name], labels)
    loss_attr = torch.stack(attr_losses).mean() if attr_losses else loss_cat.new_zeros(())
    dense = batch["dense"].reshape(-1)
    n_cat = out["dense_clip"].shape[-1]
    loss_dense = 0.5 * (F.cross_entropy(out["dense_clip"].float().reshape(-1, n_cat), dense)
                        + F.cross_entropy(out["dense_convnext"].float().reshape(-1, n_cat), dense))
    regions = batch["is_region"]
    category = batch["category"]
    logs.update({
        "loss_category": loss_cat.detach(), "loss_attributes": loss_attr.detach(), "loss_dense": loss_dense.detach(),
        "acc_dense_clip": _accuracy(out["dense_clip"].reshape(-1, n_cat), dense),
        "acc_dense_convnext": _accuracy(out["dense_convnext"].reshape(-1, n_cat), dense),
    })
    if labelled["regions"]:
        logs["acc_category"] = _accuracy(out["category"], torch.where(regions, category, IGNORE))
    if labelled["background"]:
        logs["acc_background"] = _accuracy(out["category"], torch.where(regions, IGNORE, category))
    return loss_cat + cfg.attribute_weight * loss_attr + cfg.dense_weight * loss_dense, logs


def batch_labelled(batch: dict[str, Any], attributes: list[str]) -> dict[str, bool]:
    """Which of ``attributes`` have a label in ``batch``, and whether it has regions and background boxes
    (read from the batch on the host, before it goes to the device)."""
    out = {name: bool((batch[name] != IGNORE).any()) for name in attributes}
    out["regions"] = bool(batch["is_region"].any())
    out["background"] = bool((~batch["is_region"]).any())
    return out


class VisionTask:
    """``TrainTask`` for stage 0 (see the module docstring)."""

    name = "chatrex-stage0"
    find_unused_parameters = True  # CLIP's last layer feeds nothing (features come from the penultimate one)

    def __init__(self, cfg: VisionTaskConfig, vocabulary: Optional[VisionVocabulary] = None) -> None:
        """``vocabulary``: label the data with these names (e.g. an export's, to evaluate it on another
        split) instead of the names found in the data."""
        from chatrex.mllm.image_processing import ChatRexImageProcessor

        self.cfg = cfg
        self.config = vision_config(cfg.vision)
        self.image_processor = ChatRexImageProcessor(self.config.image_size, self.config.image_size_aux)
        self._vocabulary = vocabulary
        self._dataset: Optional[VisionPretrainDataset] = None
        if cfg.init_from:
            _read_meta(Path(cfg.init_from))  # a wrong path fails before any training starts

    @property
    def dataset(self) -> VisionPretrainDataset:
        if self._dataset is None:  # read once: the model's heads need the vocabulary
            self._dataset = VisionPretrainDataset(self.cfg.data, vocabulary=self._vocabulary)
        return self._dataset

    def build_model(self) -> nn.Module:
        model = VisionPretrainModel(self.config, self.dataset.vocabulary, self.cfg.head_dim)
        if self.cfg.init_from:
            _init_from_export(model, Path(self.cfg.init_from))
        return model.train()

    def build_dataset(self) -> VisionPretrainDataset:
        return self.dataset

    def param_groups(self, model: nn.Module, train_cfg) -> list[dict[str, Any]]:
        return default_param_groups(model, train_cfg.lr, train_cfg.weight_decay)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_vision(samples, self.image_processor, self.config.image_grid,
                              list(self.dataset.vocabulary.attributes))

    def compute_loss(self, model, batch, device):
        attributes = list(self.dataset.vocabulary.attributes)
        labelled = batch_labelled(batch, attributes)  # on the host, before the batch moves
        moved = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device, non_blocking=True))
                 for k, v in batch.items()}
        pv = self.image_processor.normalize(moved["pixel_values"])
        pva = self.image_processor.normalize(moved["pixel_values_aux"], aux=True)
        out = model(pv, pva, moved["boxes"], moved.get("region_masks"), moved.get("region_mask_indices"))
        return vision_losses(out, moved, self.cfg, attributes, labelled)

    def export(self, model: nn.Module, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        (out_dir / CONFIG_FILE).write_text(json.dumps({
            "vision": vision_overrides(self.config),
            "vocabulary": model.vocabulary.to_dict(),
            "head_dim": self.cfg.head_dim,
        }, indent=2))
        self.image_processor.save_pretrained(out_dir)


def load_vision_pretrain(path: str | Path) -> VisionPretrainModel:
    """Rebuild an exported stage-0 model (towers and heads)."""
    from chatrex.mllm.modeling_chatrex import load_state_dict_report

    path = Path(path)
    meta = _read_meta(path)
    model = VisionPretrainModel(vision_config(meta["vision"]), VisionVocabulary.from_dict(meta["vocabulary"]),
                                int(meta.get("head_dim", 512)))
    load_state_dict_report(model, path / WEIGHTS_FILE, strict=True)
    return model.eval()


def _init_from_export(model: VisionPretrainModel, path: Path) -> None:
    """Load every tensor of the stage-0 export ``path`` into ``model``; ``ValueError`` naming the difference
    when the export was trained with another vocabulary or another shape."""
    from chatrex.mllm.modeling_chatrex import load_state_dict_report

    meta = _read_meta(path)
    theirs = VisionVocabulary.from_dict(meta["vocabulary"])
    if theirs != model.vocabulary:
        raise ValueError(f"task.init_from '{path}' was trained on another vocabulary ({len(theirs.categories)} "
                         f"categories, attributes {sorted(theirs.attributes)}) than this data "
                         f"({len(model.vocabulary.categories)}, {sorted(model.vocabulary.attributes)})")
    report = load_state_dict_report(model, path / WEIGHTS_FILE)
    if not report.ok:
        raise ValueError(f"task.init_from '{path}' does not fit this model (check task.vision and task.head_dim "
                         f"against the recipe it was trained with):\n{report.summary()}")


def _is_chatrex_dir(path: Path) -> bool:
    """A ChatRex delta directory, or a ChatRex ``save_pretrained`` directory."""
    from chatrex.mllm.delta import is_delta_dir

    if is_delta_dir(path):
        return True
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "chatrex"


def _read_meta(path: Path) -> dict[str, Any]:
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"'{path}' is not a stage-0 export: it needs {CONFIG_FILE} and {WEIGHTS_FILE} (`chatrex train vision`)"
        )
    return json.loads((path / CONFIG_FILE).read_text())


def load_pretrained_towers(model: nn.Module, path: str | Path) -> int:
    """Copy the towers of a stage-0 export into ``model`` (a ChatRex model or anything with the same
    ``vision_tower`` / ``vision_tower_aux``), and its object head's trunk into ``model.mm_object_trunk``
    when the model has one (``config.object_trunk_dim`` > 0). Returns the number of tensors loaded.

    ``path`` may also be a trained ChatRex (a delta directory or a ``save_pretrained`` one): its towers and
    ``mm_object_trunk`` are copied, its projectors and LLM are not.

    Raises ``ValueError`` when the export's towers (or trunk) do not have exactly the model's tensors and shapes.
    """
    from chatrex.mllm.modeling_chatrex import load_state_dict_report

    path = Path(path)
    parts = {"vision_tower": model.vision_tower, "vision_tower_aux": model.vision_tower_aux}
    trunk = getattr(model, "mm_object_trunk", None)
    if trunk is not None:
        parts["mm_object_trunk"] = trunk
    if _is_chatrex_dir(path):  # the same names as ours: keep the towers and the trunk
        source, what = path, f"the towers of the ChatRex model '{path}'"
        keep = tuple(f"{name}." for name in parts)

        def rename(key: str) -> str | None:
            return key if key.startswith(keep) else None
    else:  # a stage-0 export: its object head's trunk is ``object_trunk``
        meta = _read_meta(path)
        source, what = path / WEIGHTS_FILE, f"the towers in '{path}'"
        if trunk is not None and int(meta.get("head_dim", 512)) != trunk[0].out_features:
            raise ValueError(f"the stage-0 export '{path}' has an object trunk of width {meta.get('head_dim', 512)}, "
                             f"but this model's object_trunk_dim is {trunk[0].out_features}; set them equal")

        def rename(key: str) -> str | None:
            if key.startswith(TOWER_PREFIXES):
                return key
            if trunk is not None and key.startswith("object_trunk."):
                return "mm_" + key
            return None

    report = load_state_dict_report(nn.ModuleDict(parts), source, key_mapping=rename)
    if not report.ok:
        raise ValueError(f"{what} do not fit this model (check task.vision, object_trunk_dim included, against "
                         f"the recipe it was trained with):\n{report.summary()}")
    return len(report.loaded)


__all__ = ["VisionTaskConfig", "VisionPretrainModel", "VisionTask", "vision_losses", "vision_config",
           "vision_overrides", "load_vision_pretrain", "load_pretrained_towers"]
