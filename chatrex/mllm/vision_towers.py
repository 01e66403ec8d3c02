"""The two image encoders of ChatRex.

* :class:`CLIPVisionTower` — low resolution: a transformers ``CLIPVisionModel``; tokens are the
  penultimate layer's hidden states with the CLS token dropped → (B, g², C_clip).
* :class:`ConvNeXtTower` — high resolution: timm's ``ConvNeXt`` trunk (the open_clip
  ``CLIP-convnext_large_d`` trunk at full size) returning its four stage outputs at strides 4/8/16/32.

Parameter names follow the original layouts so checkpoints map with a prefix change only:
``vision_tower.vision_tower.*`` (transformers 5 ``CLIPVisionModel``, i.e. ``embeddings.*``, ``encoder.*``) and ``vision_tower_aux.trunk.*`` (open_clip
``visual.trunk.*``; the trunk's classifier head is removed, since ChatRex never uses it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

CONVNEXT_STRIDES = (4, 8, 16, 32)


@dataclass
class ConvNeXtTowerConfig:
    """Shape of the ConvNeXt tower. Defaults: ConvNeXt-L (CLIP-convnext_large_d trunk) at 768 px."""

    depths: tuple[int, ...] = (3, 3, 27, 3)
    dims: tuple[int, ...] = (192, 384, 768, 1536)
    image_size: int = 768
    drop_path_rate: float = 0.0
    ls_init_value: float = 1e-6
    conv_mlp: bool = False

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.dims = tuple(int(d) for d in self.dims)
        if len(self.depths) != 4 or len(self.dims) != 4:
            raise ValueError(
                f"the ConvNeXt tower needs 4 stages (strides 4/8/16/32); got depths={self.depths}, dims={self.dims}"
            )
        if min(self.depths) < 1 or min(self.dims) < 1:
            raise ValueError(f"ConvNeXt depths and dims must be positive; got {self.depths}, {self.dims}")

    @property
    def strides(self) -> tuple[int, ...]:
        return CONVNEXT_STRIDES

    @property
    def grid(self) -> int:
        """Side of the last (stride-32) feature map."""
        return self.image_size // CONVNEXT_STRIDES[-1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depths"], d["dims"] = list(self.depths), list(self.dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConvNeXtTowerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ConvNeXt tower config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class CLIPVisionTower(nn.Module):
    """CLIP ViT features for the image tokens.

    ``forward(pixel_values (B,3,S,S)) -> (B, (S/p)², C_clip)``: hidden states of layer
    ``feature_layer`` (default -2, the penultimate), CLS token dropped.
    """

    def __init__(self, config, feature_layer: int = -2):
        super().__init__()
        from transformers import CLIPVisionModel

        self.feature_layer = feature_layer
        self.vision_tower = CLIPVisionModel(config)

    @property
    def config(self):
        return self.vision_tower.config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"pixel_values must have shape (B, 3, {size}, {size}) for the CLIP tower; got {tuple(pixel_values.shape)}"
            )
        dtype = self.vision_tower.embeddings.patch_embedding.weight.dtype
        out = self.vision_tower(pixel_values.to(dtype), output_hidden_states=True)
        return out.hidden_states[self.feature_layer][:, 1:]


class ConvNeXtTower(nn.Module):
    """timm ConvNeXt trunk returning all four stages.

    ``forward(pixel_values_aux (B,3,S,S)) -> [ (B,C_l,S/s_l,S/s_l) for s_l in (4,8,16,32) ]``.
    """

    def __init__(self, config: ConvNeXtTowerConfig):
        super().__init__()
        from timm.models.convnext import ConvNeXt

        self.tower_config = config
        self.trunk = ConvNeXt(
            in_chans=3, num_classes=0, global_pool="", depths=config.depths, dims=config.dims,
            drop_path_rate=config.drop_path_rate, ls_init_value=config.ls_init_value, conv_mlp=config.conv_mlp,
        )
        # ChatRex uses the stage outputs only: drop the unused classifier head (and its norm) so that
        # every parameter receives a gradient.
        self.trunk.head = nn.Identity()

    @property
    def dims(self) -> tuple[int, ...]:
        return self.tower_config.dims

    def forward(self, pixel_values_aux: torch.Tensor) -> list[torch.Tensor]:
        size = self.tower_config.image_size
        x = pixel_values_aux
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (size, size):
            raise ValueError(
                f"pixel_values_aux must have shape (B, 3, {size}, {size}) for the ConvNeXt tower; got {tuple(x.shape)}"
            )
        x = x.to(self.trunk.stem[0].weight.dtype)
        return list(self.trunk.forward_intermediates(x, intermediates_only=True))


__all__ = ["CLIPVisionTower", "ConvNeXtTower", "ConvNeXtTowerConfig", "CONVNEXT_STRIDES"]
