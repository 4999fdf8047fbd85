"""The encoders `wanlite encode` runs: Wan's VAE (diffusers `AutoencoderKLWan`, 16 or 48 channels) and umT5-XXL
(transformers), from a Diffusers-format folder, a Hub id or a ComfyUI single file; never a pickle."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError, FormatError
from ..formats.io import refuse_pickle

# Wan's default negative prompt (the official repositories and diffusers' examples)
WAN_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


# ------------------------------------------------------------------ encoders
class UMT5Text:
    """umT5 (transformers `UMT5EncoderModel` + its tokenizer) as `prompts -> [B, length, dim]`, the way Wan's
    pipelines embed: whitespace cleaned, padded/truncated to `length` tokens, zeros past each prompt's tokens."""

    def __init__(self, model, tokenizer, length: int = 512):
        self.model, self.tokenizer, self.length = model, tokenizer, length

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        p = next(self.model.parameters())
        tokens = self.tokenizer(
            [_clean(text) for text in prompts],
            padding="max_length",
            max_length=self.length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(p.device)
        hidden = self.model(tokens.input_ids.to(p.device), attention_mask=mask).last_hidden_state
        return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).cpu()


@dataclass
class Encoders:
    """What `encode` needs: `vae.encode(video [B, 3, F, H, W] in [0, 1]) -> normalised latents` (and `decode`
    back, for checks), `text(prompts) -> [B, L, 4096]`, the default negative prompt, and the pixel stride of one
    latent (8: Wan2.1 VAE, 16: Wan2.2 VAE). `modules` are moved on and off the device with `--low-memory`."""

    vae: object
    text: Callable[[Sequence[str]], torch.Tensor]
    negative: str = WAN_NEGATIVE
    stride: int = 8
    name: str = ""
    modules: dict = field(default_factory=dict)  # "vae" / "text": torch modules to place


def _clean(text: str) -> str:
    """Wan's prompt cleaning: ftfy (when installed), HTML entities, runs of whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


PICKLE_FIX = (  # where the safetensors form of Wan's pickled VAE lives
    "wanlite never unpickles weights; use the safetensors release instead: the ComfyUI file "
    "wan_2.1_vae.safetensors / wan2.2_vae.safetensors (Comfy-Org/Wan_2.1_ComfyUI_repackaged, "
    "Comfy-Org/Wan_2.2_ComfyUI_Repackaged) or the Diffusers repository's vae/ folder (e.g. "
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers)."
)


def load_encoders(
    models=None,
    vae=None,
    text_encoder=None,
    tokenizer=None,
    device=None,
    dtype: torch.dtype | None = None,
    text_length: int = 512,
    revision: str | None = None,
    need_vae: bool = True,
) -> Encoders:
    """The Wan VAE (diffusers `AutoencoderKLWan`, 16 or 48 channels) and umT5 (transformers) from a Diffusers-format
    directory or Hub id (`vae/`, `text_encoder/`, `tokenizer/`), or from given paths: `vae` may be a folder or a
    single .safetensors (ComfyUI's wan_2.1_vae.safetensors, through diffusers' from_single_file)."""
    from ..evaluate.vae import DiffusersWanVAE
    from ..formats import hub

    name = str(models or vae)  # what the cache records: the Hub id itself, not its snapshot folder
    if models is not None and hub.is_repo_id(models):
        patterns = ["vae/*.json", "vae/*.safetensors", "text_encoder/*.json", "text_encoder/*.safetensors"]
        patterns += ["tokenizer/*"]
        models = hub.resolve(
            models,
            locators=["model_index.json", "vae/config.json", "text_encoder/config.json"],
            locate=lambda root: root,
            files=lambda folder: patterns,
            revision=revision,
        )
    models = Path(models) if models is not None else None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    vae_path = Path(vae) if vae is not None else (models / "vae" if models else None)
    te_path = Path(text_encoder) if text_encoder else (models / "text_encoder" if models else None)
    tok_path = Path(tokenizer) if tokenizer else None
    if tok_path is None and te_path is not None:
        beside = te_path.parent / "tokenizer"
        tok_path = beside if beside.is_dir() else te_path
    missing = []
    if need_vae and (vae_path is None or not (vae_path.is_file() or (vae_path / "config.json").is_file())):
        looked = f"{vae_path}/config.json" if vae_path and not vae_path.suffix else (vae_path or "(no --models)")
        missing.append(f"the VAE (looked for {looked}; or pass --vae)")
    if te_path is None or not (te_path / "config.json").is_file():
        looked = f"{te_path}/config.json" if te_path else "(no --models)"
        if te_path is not None and te_path.suffix == ".safetensors":
            looked += "; a single umT5 .safetensors has no config or tokenizer: pass its Diffusers text_encoder/"
        missing.append(f"the text encoder (looked for {looked}; or pass --text-encoder)")
    elif tok_path is None or not any((tok_path / n).is_file() for n in ("tokenizer.json", "spiece.model")):
        missing.append(f"the tokenizer (looked for {tok_path}/tokenizer.json or spiece.model; or pass --tokenizer)")
    if missing:
        official = models is not None and models.is_dir() and any(models.glob("*VAE*.pth"))
        hint = " (this is the official Wan layout: its VAE and umT5 are pickles, never loaded)" if official else ""
        raise ConfigError(
            f"{models or 'encoders'}: missing " + " and ".join(missing) + f"{hint}. Fix: --models a Diffusers-format "
            "Wan directory or Hub id (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers: vae/, text_encoder/, tokenizer/)."
        )
    from transformers import AutoTokenizer, UMT5EncoderModel

    modules, wrapped, stride = {}, None, 8
    if need_vae:
        from diffusers import AutoencoderKLWan

        refuse_pickle(vae_path, PICKLE_FIX)
        if vae_path.is_file():
            if vae_path.suffix != ".safetensors":
                raise FormatError(f"{vae_path}: expected a .safetensors VAE file or a diffusers vae/ folder.")
            try:
                model = AutoencoderKLWan.from_single_file(str(vae_path), torch_dtype=dtype)
            except Exception as err:  # diffusers fetches the matching config from the Hub: say what it needs
                raise FormatError(
                    f"{vae_path}: diffusers could not load this single-file VAE ({type(err).__name__}: {err}). "
                    "Fix: pass --vae a Diffusers vae/ folder, or be online once so diffusers can fetch its config."
                ) from None
        else:
            model = AutoencoderKLWan.from_pretrained(vae_path, torch_dtype=dtype, use_safetensors=True)
        model = model.to(device).eval()
        wrapped, modules["vae"] = DiffusersWanVAE(model), model
        stride = int(model.config.get("scale_factor_spatial") or 8)
    refuse_pickle(te_path, PICKLE_FIX)
    text_model = UMT5EncoderModel.from_pretrained(te_path, torch_dtype=dtype, use_safetensors=True).to(device).eval()
    modules["text"] = text_model
    text = UMT5Text(text_model, AutoTokenizer.from_pretrained(tok_path), length=text_length)
    return Encoders(vae=wrapped, text=text, stride=stride, name=name, modules=modules)


# ------------------------------------------------------------------ sources
