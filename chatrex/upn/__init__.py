"""Universal Proposal Network (UPN): the DETR-family proposal model of ChatRex.

``build_upn(cfg)`` builds the model from a ``UPNConfig`` / preset name / config file;
``load_official_checkpoint`` reads the official ``{"model": state_dict}`` files and
``save_pretrained`` / ``from_pretrained`` our safetensors format; ``UPNWrapper`` is the inference
API (images in, proposals out), compatible with the official one.
"""

from chatrex.upn.checkpoint import (
    CheckpointError,
    LoadResult,
    load_official_checkpoint,
    save_pretrained,
)
from chatrex.upn.config import PRESETS, ConfigError, UPNConfig, config_from_official, resolve_config
from chatrex.upn.model import UPN, build_upn, from_pretrained
from chatrex.upn.wrapper import UPNWrapper

__all__ = [
    "PRESETS", "UPN", "CheckpointError", "ConfigError", "LoadResult", "UPNConfig", "UPNWrapper", "build_upn",
    "config_from_official", "from_pretrained", "load_official_checkpoint", "resolve_config", "save_pretrained",
]
