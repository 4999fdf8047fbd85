"""A toy world that makes the workbench meaningful on a CPU: synthetic captioned clips, a linear toy VAE, a toy
text encoder, a prompt-adherence metric, and a small *trained* Wan teacher (shipped in wanlite/assets/toy).

    from wanlite import toy
    model = toy.teacher()                                  # diffusers WanTransformer3DModel, Wan2.1 T2V layout
    videos = toy.generate(model, ["red circle moving left"])   # [B, 3, 17, 64, 64] in [0, 1]
    toy.adherence(videos, ["red circle moving left"])      # colour / shape / direction read off the pixels

Sampling defaults (what the shipped teacher was scored with): UniPC, 20 steps, guidance 4, shift 5, the empty
prompt "" as negative context. `python -m wanlite.toy train|eval|show` makes, scores and shows a teacher.
"""

from .adherence import Adherence, Description, adherence, describe
from .show import filmstrip, save_gif
from .teacher import (
    TEACHER_SAMPLING,
    TeacherConfig,
    TrainResult,
    build,
    evaluate,
    generate,
    info,
    load_vae,
    sampling_of,
    save,
    score,
    teacher,
    train,
)
from .text import encode_text
from .vae import ToyVAE
from .world import COLOURS, DIRECTIONS, SHAPES, Caption, WorldConfig, batch, captions, parse, render

__all__ = [
    "TEACHER_SAMPLING",
    "sampling_of",
    "score",
    "Adherence",
    "Caption",
    "COLOURS",
    "DIRECTIONS",
    "Description",
    "SHAPES",
    "TeacherConfig",
    "ToyVAE",
    "TrainResult",
    "WorldConfig",
    "adherence",
    "batch",
    "build",
    "captions",
    "describe",
    "encode_text",
    "evaluate",
    "filmstrip",
    "generate",
    "info",
    "load_vae",
    "parse",
    "render",
    "save",
    "save_gif",
    "teacher",
    "train",
]
