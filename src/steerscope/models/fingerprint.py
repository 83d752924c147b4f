"""A stable model fingerprint: a hash of the architecture config and a few weight tensors."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

# Config fields that describe how a model was loaded or saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "dtype",
    "quantization_config", "architectures", "_attn_implementation", "_attn_implementation_autoset",
    "use_cache", "output_hidden_states", "output_attentions", "return_dict", "_model_name_or_path",
    "pad_token_id", "name_or_path",
}
_N_HASHED_TENSORS = 4
_MAX_HASHED_ELEMENTS = 65536


def _config_signature(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    data = config.to_dict() if config is not None else {"class": type(model).__name__}
    data = {k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(data, sort_keys=True, default=str)


def model_fingerprint(model: nn.Module) -> str:
    """Hex digest (16 chars) of the config and the first elements of a few weight tensors.

    Weights are rounded to bfloat16 before hashing, so loads of the same checkpoint in float32,
    bfloat16 or on another device give the same fingerprint. Tensors are taken at fixed places in
    the sorted parameter list (first, last and two in between).
    """
    digest = hashlib.sha256(_config_signature(model).encode())
    named = sorted(model.state_dict().items())
    if named:
        picks = sorted({round(i * (len(named) - 1) / (_N_HASHED_TENSORS - 1)) for i in range(_N_HASHED_TENSORS)})
        for idx in picks:
            name, tensor = named[idx]
            flat = tensor.detach().reshape(-1)[:_MAX_HASHED_ELEMENTS]
            if flat.is_floating_point():
                flat = flat.to("cpu", torch.bfloat16).view(torch.int16)
            digest.update(name.encode())
            digest.update(flat.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
