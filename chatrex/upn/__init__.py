"""Universal Proposal Network (UPN): the DETR-family proposal model of ChatRex.

``build_upn(cfg)`` builds the model from a ``UPNConfig`` / preset name / config file;
``load_official_checkpoint`` reads the official ``{"model": state_dict}`` files and
``save_pretrained`` / ``from_pretrained`` our safetensors format.
"""

from chatrex.upn.config import PRESETS, UPNConfig, config_from_official, resolve_config
from chatrex.upn.model import UPN, build_upn

__all__ = ["PRESETS", "UPN", "UPNConfig", "build_upn", "config_from_official", "resolve_config"]
