"""The UPN training task: model + denoising generator, losses, data, export."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from chatrex.data.upn_dataset import PROMPT_OF, UPNDataConfig, UPNDataset, collate_upn, device_batch
from chatrex.training.task import default_param_groups
from chatrex.training.upn.criterion import CriterionConfig, UPNCriterion
from chatrex.training.upn.denoising import DenoisingConfig, DenoisingGenerator
from chatrex.training.upn.matcher import MatcherConfig


@dataclass
class UPNTaskConfig:
    """Attributes:
        model: a UPN preset name, config JSON path or dict (``chatrex.upn.config.resolve_config``).
        data: the data options (``UPNDataConfig``).
        denoising, criterion: CDN and loss options.
        init_checkpoint: optional weights to start from (official .pth or our directory).
        backbone_lr_mult: learning-rate factor of the Swin backbone.
        inference_resize, inference_max_size: the resize written into the exported model's
            preprocessor config (what the wrapper should use at inference).
        export_dtype: storage dtype of the exported weights ("float32", "float16", "bfloat16").
    """

    model: Any = "upn_small"
    data: UPNDataConfig = field(default_factory=UPNDataConfig)
    denoising: DenoisingConfig = field(default_factory=DenoisingConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    init_checkpoint: Optional[str] = None
    backbone_lr_mult: float = 1.0
    inference_resize: int = 800
    inference_max_size: int = 1333
    export_dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UPNTaskConfig":
        d = dict(d)
        d.pop("type", None)
        data = UPNDataConfig(**d.pop("data", {}))
        dn = DenoisingConfig(**d.pop("denoising", {}))
        crit = dict(d.pop("criterion", {}))
        matcher = MatcherConfig(**crit.pop("matcher", {}))
        return cls(data=data, denoising=dn, criterion=CriterionConfig(matcher=matcher, **crit), **d)


class UPNTrainingModule(nn.Module):
    """UPN plus the training-only denoising generator, so one DDP/FSDP wrapper covers both.

    The encoder is prompt-independent, so one forward runs the backbone and encoder once and the
    decoder once per granularity, each with its own targets and denoising queries.
    """

    def __init__(self, upn: nn.Module, denoising: DenoisingGenerator) -> None:
        super().__init__()
        self.upn = upn
        self.denoising = denoising

    def forward(self, images: torch.Tensor, mask: torch.Tensor,
                targets: dict[str, list[torch.Tensor]]) -> dict[str, dict[str, Any]]:
        """Args:
            images (B,3,H,W), mask (B,H,W) True = padding;
            targets: {"fine"|"coarse": B tensors (N_b,4) normalised cxcywh}.
        Returns:
            {granularity: training outputs of ``UPN.forward_decoder`` (+ ``dn_meta``)}.
        """
        state = self.upn.forward_encoder(images, mask)
        outs = {}
        for granularity, tgts in targets.items():
            dn = self.denoising(tgts, self.upn.config.num_queries)
            kwargs = {}
            if dn is not None:
                kwargs = {k: dn[k] for k in ("dn_content", "dn_refpoints", "dn_attn_mask")}
            out = self.upn.forward_decoder(state, PROMPT_OF[granularity], return_aux=True, **kwargs)
            if dn is not None:
                out["dn_meta"] = dn["meta"]
            outs[granularity] = out
        return outs


class UPNTask:
    """``TrainTask`` for the UPN (see ``chatrex.training.task``)."""

    name = "upn"
    find_unused_parameters = True  # ref_point_head_point never takes part (the official code multiplies it by 0)

    def __init__(self, cfg: UPNTaskConfig) -> None:
        self.cfg = cfg
        self.criterion = UPNCriterion(cfg.criterion)

    def build_model(self) -> nn.Module:
        from chatrex.upn.config import resolve_config
        from chatrex.upn.model import build_upn

        upn_cfg = resolve_config(self.cfg.model)
        upn = build_upn(upn_cfg)
        if self.cfg.init_checkpoint:
            from chatrex.upn.wrapper import _load_model

            loaded, _ = _load_model(self.cfg.init_checkpoint, upn_cfg, torch.device("cpu"))
            upn.load_state_dict(loaded.state_dict())
        # kept for the official checkpoints' keys, never used in the forward pass: frozen, so that the
        # optimizer holds no parameter that never gets a gradient (a resumed run would find no state for it)
        upn.transformer.decoder.ref_point_head_point.requires_grad_(False)
        return UPNTrainingModule(upn, DenoisingGenerator(upn_cfg.d_model, self.cfg.denoising))

    def build_dataset(self) -> UPNDataset:
        return UPNDataset(self.cfg.data)

    def collate(self, samples):
        d = self.cfg.data
        return collate_upn(samples, d.granularities, scales=d.scales, max_size=d.max_size)

    def repeated_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The Swin blocks, which ``train.compile`` compiles: their window reshapes, casts, norms and MLPs
        are many small memory-bound kernels (a fifth of an H200's step time went to copies alone)."""
        from chatrex.upn.swin import SwinTransformerBlock

        upn = model.upn if isinstance(model, UPNTrainingModule) else model
        return [m for m in upn.modules() if isinstance(m, SwinTransformerBlock)]

    def param_groups(self, model: nn.Module, train_cfg) -> list[dict[str, Any]]:
        return default_param_groups(model, train_cfg.lr, train_cfg.weight_decay,
                                    {"upn.backbone.": self.cfg.backbone_lr_mult})

    def compute_loss(self, model, batch, device):
        images, mask = device_batch(batch, device)
        targets = {g: [t.to(device) for t in ts] for g, ts in batch["targets"].items()}
        outs = model(images, mask, targets)
        total, logs = 0.0, {}
        for g, out in outs.items():
            loss, parts = self.criterion(out, targets[g])
            total = total + loss
            logs[f"loss_{g}"] = loss.detach()
            logs.update({f"{k}_{g}": v for k, v in parts.items()})
        # 0-d tensors: the trainer reads them at log time, so the step never waits for the device
        return total, logs

    def export(self, model: nn.Module, out_dir: Path) -> None:
        from chatrex.upn.checkpoint import save_pretrained
        from chatrex.upn.wrapper import PREPROCESSOR_CONFIG

        upn = model.upn if isinstance(model, UPNTrainingModule) else model
        dtype = getattr(torch, self.cfg.export_dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"export_dtype must be float32, float16 or bfloat16, got {self.cfg.export_dtype!r}")
        upn = copy.deepcopy(upn).to(dtype)
        save_pretrained(upn, upn.config, out_dir)
        (Path(out_dir) / PREPROCESSOR_CONFIG).write_text(json.dumps(
            {"resize": self.cfg.inference_resize, "max_size": self.cfg.inference_max_size}, indent=2))
