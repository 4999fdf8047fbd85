"""What the loop is handed: models placed and cast the way diffusers keeps Wan (fp32 norms and modulation), and an
optimiser by name."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def resolve_dtype(name: str, on_gpu: bool) -> torch.dtype:
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    if name not in table:
        raise ConfigError(f"teacher_dtype={name!r}; expected auto | bf16 | fp16 | fp32.")
    return table[name]


def place(model, device, dtype: torch.dtype):
    """Move `model` to `device` and cast it to `dtype`, keeping the modules diffusers keeps in fp32 (rope,
    time embedder, modulation tables, norms) in fp32, as `from_pretrained(torch_dtype=...)` does."""
    if device is not None:
        model = model.to(device)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        want = torch.float32 if dtype != torch.float32 and keep & set(name.split(".")) else dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    return model


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, **kwargs):
    """An optimiser by name: adamw | adam | sgd | adafactor | adamw8bit (bitsandbytes) | "package.module:Class"."""
    import importlib

    table = {
        "adamw": torch.optim.AdamW,
        "adam": torch.optim.Adam,
        "sgd": torch.optim.SGD,
        "adafactor": getattr(torch.optim, "Adafactor", None),
    }
    if name.lower() == "adamw8bit":
        cls = importlib.import_module("bitsandbytes.optim").AdamW8bit
    elif ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    elif table.get(name.lower()) is not None:
        cls = table[name.lower()]
    else:
        raise ConfigError(
            f"optimizer={name!r} is not known; expected one of {sorted(table)}, adamw8bit, or 'module:Class'."
        )
    return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
