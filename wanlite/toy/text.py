"""The toy text encoder: captions -> a Wan text context [B, L, 4096], shaped and padded like umT5-XXL's output.

Each word gets a fixed pseudo-random vector (seeded by the word itself, so the same word gives the same vector
on every machine and in every process); a caption is its word vectors followed by an end-of-sequence vector,
then zeros up to `length` -- the way the Wan pipelines pad umT5's output. The empty prompt "" is the EOS vector
alone: the negative / unconditional context used for classifier-free guidance.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import torch

from ..errors import WanliteError

TEXT_DIM = 4096  # umT5-XXL width, what every Wan's text_embedding expects
LENGTH = 16  # tokens per context (Wan uses 512; the toy's captions have 4 words + EOS)
EOS = "</s>"


@lru_cache(maxsize=None)
def word_vector(word: str) -> torch.Tensor:
    """The fixed [4096] vector of one word (unit variance per entry; seeded by crc32 of the word)."""
    g = torch.Generator().manual_seed(zlib.crc32(word.encode("utf-8")))
    return torch.randn(TEXT_DIM, generator=g)


def encode_text(prompts: str | list[str], length: int = LENGTH) -> torch.Tensor:
    """Captions -> context [B, length, 4096]: word vectors, an EOS vector, then zero padding."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    out = torch.zeros(len(prompts), length, TEXT_DIM)
    for i, prompt in enumerate(prompts):
        words = prompt.lower().split() + [EOS]
        if len(words) > length:
            raise WanliteError(
                f"toy prompt {prompt!r} has {len(words) - 1} words; the toy text encoder holds at most "
                f"{length - 1} (length={length}). Fix: a shorter prompt or a larger `length`."
            )
        for j, word in enumerate(words):
            out[i, j] = word_vector(word)
    return out
