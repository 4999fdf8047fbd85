"""Tiny random Wan transformers for tests, benches and examples (nothing is downloaded).

Heads are 128 wide and text_dim 4096, like every real Wan, so ComfyUI's rules hold for them too.
"""

from __future__ import annotations

import torch

from .formats.spec import WanSpec

TINY = {
    "t2v": WanSpec(model_type="t2v", dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=16, out_dim=16),
    "i2v": WanSpec(
        model_type="i2v", dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=36, out_dim=16, image_dim=1280
    ),
    "ti2v": WanSpec(model_type="ti2v", dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=48, out_dim=48),
}


def tiny_spec(kind: str = "t2v", **changes) -> WanSpec:
    """A small Wan spec (2 heads x 128, 2 blocks) of kind t2v | i2v | ti2v, with optional field changes."""
    return TINY[kind].replace(**changes)


def random_wan(spec: WanSpec, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A diffusers `WanTransformer3DModel` of `spec` with seeded random weights.

    Unlike a fresh official Wan (whose head is zeroed) every weight is non-trivial, so equality tests mean
    something: norms and modulation tables are perturbed too."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**spec.to_diffusers_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # norm scales: near 1, not exactly 1
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
        model.proj_out.weight.normal_(0, 0.02)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def random_inputs(
    spec: WanSpec,
    batch: int = 1,
    frames: int = 2,
    height: int = 8,
    width: int = 8,
    text_tokens: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Inputs for `wan_forward(model, **inputs)`: states x [B, in_dim, F, H, W], sigma [B], context [B, L, text_dim]
    (real tokens, zero-padded like umT5), plus CLIP image tokens (`image_clip`) for an image-embedder model."""
    g = torch.Generator().manual_seed(seed)
    # diffusers' i2v attention takes the last 512 context tokens as text: an image model needs the full length
    length = spec.text_len if spec.has_image_embedder else 16
    context = torch.zeros(batch, length, spec.text_dim)
    context[:, :text_tokens] = torch.randn(batch, text_tokens, spec.text_dim, generator=g)
    inputs = dict(
        x=torch.randn(batch, spec.in_dim, frames, height, width, generator=g),
        sigma=torch.rand(batch, generator=g),
        context=context,
    )
    if spec.has_image_embedder:
        tokens = spec.image_pos_len or 257
        inputs["image_clip"] = torch.randn(batch, tokens, spec.image_dim, generator=g)
    return {k: v.to(dtype) if k != "sigma" else v for k, v in inputs.items()}


def broken_comfyui_files(folder) -> dict:
    """Files ComfyUI users run into, for demonstrations: a head_dim-64 student (loads silently, runs wrong) and a
    diffusers-named file ("Could not detect model type"). Returns name -> path."""
    from pathlib import Path

    from safetensors.torch import save_file

    from .formats import save_wan

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    head64 = random_wan(tiny_spec("t2v", num_heads=4))  # 4 heads of 64
    save_wan(head64, folder / "head_dim_64.safetensors", layout="comfyui", allow_non_comfyui=True, overwrite=True)
    save_file(
        {k: v.contiguous() for k, v in random_wan(tiny_spec("t2v")).state_dict().items()},
        str(folder / "diffusers_names.safetensors"),
    )
    return {
        "head_dim_64": folder / "head_dim_64.safetensors",
        "diffusers_names": folder / "diffusers_names.safetensors",
    }


# ---------------------------------------------------------------- tiny encoders (Wan VAE, umT5, tokenizer)
TINY_WORDS = "a red blue cat dog walking running on grass sand at night the city street rain".split()


def tiny_vae(channels: int = 16):
    """A random diffusers `AutoencoderKLWan` a few KB big: 16 channels (Wan2.1, 8 px per latent) or 48 (Wan2.2,
    16 px per latent), with random latents_mean / latents_std so normalisation is exercised."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(channels)
    common = dict(base_dim=8, num_res_blocks=1, dim_mult=[1, 1, 1, 1], temperal_downsample=[False, True, True])
    stats = dict(latents_mean=torch.randn(channels).tolist(), latents_std=(1 + torch.rand(channels)).tolist())
    if channels == 48:  # Wan2.2's VAE: 2x2 pixel patches in, 16 px per latent
        common.update(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16)
    return AutoencoderKLWan(z_dim=channels, **common, **stats).eval()


def tiny_tokenizer():
    """A word-level fast tokenizer over TINY_WORDS with T5's pad / eos / unk, saved like umT5's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(TINY_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_wan_encoders(folder, channels: int = 16):
    """A Diffusers-format Wan folder with just vae/, text_encoder/ and tokenizer/ (random, tiny; umT5 width 4096),
    what `wanlite encode --models`, the notebooks' `text_encoder` and `vae` read."""
    from pathlib import Path

    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    tiny_vae(channels).save_pretrained(folder / "vae")
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=32, d_model=4096, d_kv=8, d_ff=16, num_layers=1, num_heads=2)
    UMT5EncoderModel(config).eval().save_pretrained(folder / "text_encoder")
    tiny_tokenizer().save_pretrained(folder / "tokenizer")
    return folder
