"""What a Wan path holds, read from headers and configs only (`WanSource`), and the names the layouts share:
weight file names, dtype names, the metadata records wanlite decodes."""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FormatError
from .gguf import read_gguf
from .io import TensorEntry, read_header
from .quant import QuantInfo, fp8_view
from .records import pruning_from_metadata, sampling_from_metadata
from .spec import WanSpec

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
COMFY_PREFIX = "model.diffusion_model."
EXPERTS = {"high_noise": ("high_noise_model", "transformer"), "low_noise": ("low_noise_model", "transformer_2")}
DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
RECORD_KEYS = ("wanlite.version", "wanlite.spec", "wanlite.pruning", "wanlite.sampling")  # decoded, not provenance


def parse_dtype(dtype) -> torch.dtype | None:
    """'bf16' | 'fp16' | 'fp32' | a torch dtype | None -> torch dtype (None keeps what the weights have)."""
    if dtype is None or dtype in SHORT:
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower().removeprefix("torch.")]
    raise FormatError(f"unsupported dtype {dtype!r}. Fix: use one of fp32, bf16, fp16.")


# --------------------------------------------------------------------------------------------------- reading


@dataclass
class WanSource:
    """What a path holds, read from headers and configs only (no tensor data): the result of `inspect_wan`."""

    path: Path
    layout: str  # wan | diffusers | single-file | legacy
    spec: WanSpec
    tensors: dict[str, TensorEntry]  # official name -> where it lives
    naming: str  # names stored in the files: official | diffusers
    config: dict | None = None
    metadata: dict = field(default_factory=dict)  # safetensors metadata of the first weight file
    notes: list[str] = field(default_factory=list)
    quant: QuantInfo | None = None  # how the file is quantized (fp8, scaled fp8, GGUF), None when it is not

    @property
    def files(self) -> list[Path]:
        return sorted({e.file for e in self.tensors.values()})

    @property
    def num_params(self) -> int:
        return sum(torch.Size(e.shape).numel() for e in self.tensors.values())

    @property
    def dtypes(self) -> dict[str, int]:
        return dict(Counter(SHORT.get(e.dtype, str(e.dtype)) for e in self.tensors.values()))

    @property
    def provenance(self) -> dict:
        """wanlite provenance stored in the safetensors metadata (`wanlite.*` keys, JSON values), without the
        records that `pruning` (and the student's other records) decode."""
        out = {}
        for k, v in self.metadata.items():
            if k.startswith("wanlite.") and k not in RECORD_KEYS:
                try:
                    out[k[len("wanlite.") :]] = json.loads(v)
                except json.JSONDecodeError:
                    out[k[len("wanlite.") :]] = v
        return out

    @property
    def pruning(self):
        """The student's `Pruning` record (from the metadata, or the file beside the weights it names), or None."""
        folder = self.path if self.path.is_dir() else self.path.parent
        return pruning_from_metadata(self.metadata.get("wanlite.pruning"), folder, where=str(self.path))

    @property
    def sampling(self):
        """How the student samples (its `Sampling` record), or None: like its teacher."""
        return sampling_from_metadata(self.metadata.get("wanlite.sampling"), where=str(self.path))

    def __repr__(self) -> str:
        lines = [
            f"{self.path} [{self.layout} layout, {self.naming} key names]",
            f"  {self.spec}",
            f"  {self.num_params:,} parameters in {len(self.files)} file(s), dtypes {self.dtypes}",
        ]
        if self.quant is not None:
            lines.append(f"  quantization: {self.quant}")
            lines += [f"  note: {n}" for n in self.quant.notes]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def quantized_view(path: Path) -> tuple[dict, dict[str, str], QuantInfo | None]:
    """A weight file's tensors by stored name (scale and marker keys folded into their weights), its metadata and
    how it is quantized (None for a plain bf16/fp16/fp32 file). GGUF or safetensors."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return read_gguf(path)
    entries, metadata = read_header(path)
    return fp8_view(path, entries, metadata)
