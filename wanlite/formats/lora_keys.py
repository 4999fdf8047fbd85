"""The names in a Wan LoRA file: which format it is, and which transformer parameter each key adapts.

Three formats name the same thing (a low-rank update of `blocks.0.self_attn.q.weight`):
* ComfyUI / official (musubi-tuner's default, DiffSynth, lightx2v):
  `diffusion_model.blocks.0.self_attn.q.lora_down.weight` / `.lora_up.weight` (or `.lora_A` / `.lora_B`),
  `.alpha`; full deltas `.diff` (weight), `.diff_b` (bias), `.diff_m` (a modulation table);
* kohya / musubi `lora_unet_`: `lora_unet_blocks_0_self_attn_q.lora_down.weight` (dots of the module as `_`);
* diffusers / PEFT: `transformer.blocks.0.attn1.to_q.lora_A.weight` / `.lora_B.weight` (diffusers names).
A key is read into a `LoraKey`: the diffusers name of the parameter it adapts and its part (down, up, alpha,
diff); `LoraFormat.name` writes it back in any format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import FormatError
from . import keys as keymap

FORMATS = ("comfyui", "kohya", "diffusers")
PARTS = {  # key suffix -> part
    "lora_down.weight": "down",
    "lora_A.weight": "down",
    "lora_up.weight": "up",
    "lora_B.weight": "up",
    "alpha": "alpha",
    "diff": "diff",  # full delta of the weight (or of a bare parameter)
    "diff_b": "diff_b",  # full delta of the bias
    "diff_m": "diff",  # full delta of a modulation table (a bare parameter)
    "lora_B.bias": "diff_b",  # diffusers / PEFT lora_bias: the bias delta
}
_KOHYA = "lora_unet_"
_COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_BLOCK = re.compile(r"^blocks[._](\d+)[._](.+)$")


def _official_modules() -> tuple[dict[str, str], dict[str, str]]:
    """Official module / bare-parameter names (global, and inside a block) by their kohya spelling (dots as _)."""
    tables = keymap._DIRECTIONS["to_official"]
    glob = {v.replace(".", "_"): v for table in tables[:2] for v in table.values()}
    block = {v.replace(".", "_"): v for table in tables[2:] for v in table.values()}
    return glob, block


_GLOBAL_K, _BLOCK_K = _official_modules()
_BARE = set(keymap._PARAMS.values()) | set(keymap._BLOCK_PARAMS.values())  # official names with no .weight


@dataclass(frozen=True)
class LoraKey:
    """What one LoRA key adapts: the diffusers parameter (`blocks.3.attn1.to_q.weight`) and the part."""

    param: str  # diffusers name of the adapted parameter (weight, bias, or a bare table)
    part: str  # down | up | alpha | diff | diff_b
    suffix: str  # the key's own suffix (lora_down.weight, lora_A.weight, diff_m, ...), kept when written back

    @property
    def block(self) -> int | None:
        match = _BLOCK.match(self.param)
        return int(match.group(1)) if match else None

    def renumbered(self, block: int) -> "LoraKey":
        return LoraKey(re.sub(r"^blocks\.\d+\.", f"blocks.{block}.", self.param), self.part, self.suffix)


@dataclass(frozen=True)
class LoraFormat:
    """One LoRA file's naming: format, the prefix its keys carry, its down/up spelling."""

    kind: str  # comfyui | kohya | diffusers
    prefix: str = ""  # diffusion_model. / model.diffusion_model. / transformer. / lora_unet_ / ""

    def parse(self, key: str, where: str = "LoRA") -> LoraKey:
        """The parameter and part `key` adapts (FormatError when the key is not one of a Wan transformer)."""
        if not key.startswith(self.prefix):
            raise FormatError(f"{where}: key {key!r} lacks the prefix {self.prefix!r} its other keys carry.")
        body = key[len(self.prefix) :]
        for suffix in sorted(PARTS, key=len, reverse=True):
            if body.endswith("." + suffix):
                module = body[: -len(suffix) - 1]
                param = self._param(module, PARTS[suffix])
                if param is not None:
                    return LoraKey(param, PARTS[suffix], suffix)
                break
        raise FormatError(
            f"{where}: key {key!r} does not adapt a Wan 2.1/2.2 transformer parameter in {self.kind} naming "
            "(LyCORIS LoHa/LoKr, DoRA and VACE/camera add-on keys are not supported)."
        )

    def _param(self, module: str, part: str) -> str | None:
        if self.kind == "kohya":
            match = _BLOCK.match(module)
            official = (
                f"blocks.{match.group(1)}.{_BLOCK_K[match.group(2)]}"
                if match and match.group(2) in _BLOCK_K
                else _GLOBAL_K.get(module)
            )
            if official is None:
                return None
        elif self.kind == "comfyui":
            official = module
        else:  # diffusers: the module is already a diffusers name
            if part == "diff" and keymap._rename(module, "to_official") is not None:
                return module  # a bare parameter (scale_shift_table)
            name = f"{module}.bias" if part == "diff_b" else f"{module}.weight"
            return name if keymap._rename(name, "to_official") is not None else None
        bare = official.rsplit(".", 1)[-1] in _BARE or official in _BARE
        if bare and part == "diff":
            return keymap._rename(official, "to_diffusers")
        name = f"{official}.bias" if part == "diff_b" else f"{official}.weight"
        return keymap._rename(name, "to_diffusers")

    def name(self, key: LoraKey) -> str:
        """`key` written in this format."""
        if self.kind == "diffusers":
            module = (
                key.param if key.param.rsplit(".", 1)[-1] not in ("weight", "bias") else key.param.rsplit(".", 1)[0]
            )
            suffix = {"down": "lora_A.weight", "up": "lora_B.weight", "diff_b": "lora_B.bias"}.get(key.part, key.suffix)
            return f"{self.prefix}{module}.{suffix}"
        official = keymap._rename(key.param, "to_official")
        module = official if key.param.rsplit(".", 1)[-1] not in ("weight", "bias") else official.rsplit(".", 1)[0]
        if self.kind == "kohya":
            module = module.replace(".", "_")
        suffix = {"lora_B.bias": "diff_b"}.get(key.suffix, key.suffix)
        if self.kind == "kohya":  # kohya spells the factors down / up
            suffix = {"down": "lora_down.weight", "up": "lora_up.weight"}.get(key.part, suffix)
        return f"{self.prefix}{module}.{suffix}"


def fits(key: LoraKey, shape, expected) -> bool:
    """Whether a LoRA tensor of `shape` fits the parameter of shape `expected` it adapts (down: [rank, in, ...],
    up: [out, rank, ...], full deltas: the parameter's own shape)."""
    if expected is None:
        return False
    shape, expected = tuple(shape), tuple(expected)
    if key.part == "down":
        return shape[1:] == expected[1:]
    if key.part == "up":
        return shape[:1] == expected[:1] and all(s == 1 for s in shape[2:])
    return key.part == "alpha" or shape == expected


def detect(keys, where: str = "LoRA") -> LoraFormat:
    """The format of a LoRA state dict's keys (FormatError naming the three known formats otherwise)."""
    keys = list(keys)
    if not keys:
        raise FormatError(f"{where}: holds no tensors. Fix: point at a LoRA .safetensors file.")
    if all(k.startswith(_KOHYA) for k in keys):
        return LoraFormat("kohya", _KOHYA)
    for prefix in _COMFY_PREFIXES:
        if all(k.startswith(prefix) for k in keys):
            return LoraFormat("comfyui", prefix)
    if all(k.startswith("transformer.") for k in keys):
        return LoraFormat("diffusers", "transformer.")
    for fmt in (LoraFormat("comfyui"), LoraFormat("diffusers")):  # bare names: official or diffusers?
        try:
            for k in keys:
                fmt.parse(k, where)
            return fmt
        except FormatError:
            continue
    sample = sorted(keys)[:3]
    raise FormatError(
        f"{where}: unknown LoRA format (e.g. keys {sample}). Known: ComfyUI/official "
        "('diffusion_model.blocks.0.self_attn.q.lora_down.weight'), kohya/musubi "
        "('lora_unet_blocks_0_self_attn_q.lora_down.weight'), diffusers/PEFT "
        "('transformer.blocks.0.attn1.to_q.lora_A.weight'). Fix: convert it to one of these."
    )


def output_format(kind: str | None, given: LoraFormat) -> LoraFormat:
    """The format to write: the input's by default, else `kind` with its usual prefix."""
    if kind is None or kind == given.kind:
        return given
    if kind not in FORMATS:
        raise FormatError(f"unknown LoRA format {kind!r}. Fix: use one of {list(FORMATS)}.")
    return LoraFormat(kind, {"comfyui": "diffusion_model.", "kohya": _KOHYA, "diffusers": "transformer."}[kind])
