"""ComfyUI workflows that sample a student the way it was trained, written beside its ComfyUI file: the UI format
(drag and drop) and the API format (POST /prompt), from one graph.

UNETLoader (the student) -> ModelSamplingSD3(shift) -> a sampler that reproduces the student's schedule exactly ->
VAEDecode -> SaveAnimatedWEBP, with the teacher's umT5 and VAE loaders named as placeholders. When the schedule is
Wan's shifted one and its steps divide 1000, ComfyUI's `simple` scheduler gives exactly those sigmas, so a plain
KSampler works on every ComfyUI with Wan 2.1; any other schedule goes through ManualSigmas -> SamplerCustom
(ComfyUI builds from 2025-12-25 on). `uni_pc` is never written for a student: ComfyUI's KSampler drops its
penultimate sigma. See comfy/samplers.py (simple_scheduler, KSampler.calculate_sigmas) and
comfy_extras/nodes_custom_sampler.py (ManualSigmas, SamplerCustom).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .io import atomic_path
from .records import Sampling

TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"  # Comfy-Org/Wan_2.1_ComfyUI_repackaged, text_encoders/
VAES = {16: "wan_2.1_vae.safetensors", 48: "wan2.2_vae.safetensors"}  # the teacher's VAE (vae/)
LATENT_NODES = {16: "EmptyHunyuanLatentVideo", 48: "Wan22ImageToVideoLatent"}  # what ComfyUI's Wan templates use


@dataclass
class Node:
    """One node: its class, widget values by name (in the node's order), and linked inputs (name, type, source)."""

    id: int
    type: str
    widgets: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)  # [(name, TYPE, (source node id, output slot))]
    outputs: list = field(default_factory=list)  # [(name, TYPE)]
    title: str | None = None
    seeded: tuple = ()  # widget names that carry ComfyUI's control_after_generate (UI format only)


def graph(
    unet_name: str,
    sampling: Sampling,
    channels: int = 16,
    prompt: str = "",
    negative: str = "",
    width: int = 832,
    height: int = 480,
    frames: int = 81,
    seed: int = 0,
    loader: str = "UNETLoader",
) -> list[Node]:
    """The workflow's nodes for a student sampled by `sampling` (t2v, 16- or 48-channel latents); `loader`
    "UnetLoaderGGUF" (ComfyUI-GGUF) for a .gguf file."""
    # Long by nature: the ComfyUI graph node by node, in wiring order; split up, the graph could not be read.
    c = sampling.comfyui()
    load = {"unet_name": unet_name, "weight_dtype": "default"}
    if loader == "UnetLoaderGGUF":  # ComfyUI-GGUF's loader has no weight_dtype widget
        load = {"unet_name": unet_name}
    nodes = [
        Node(1, loader, load, outputs=[("MODEL", "MODEL")]),
        Node(2, "ModelSamplingSD3", {"shift": sampling.shift}, [("model", "MODEL", (1, 0))], [("MODEL", "MODEL")]),
        Node(
            3, "CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}, outputs=[("CLIP", "CLIP")]
        ),
        Node(
            4,
            "CLIPTextEncode",
            {"text": prompt},
            [("clip", "CLIP", (3, 0))],
            [("CONDITIONING", "CONDITIONING")],
            title="CLIP Text Encode (Positive Prompt)",
        ),
        Node(
            5,
            "CLIPTextEncode",
            {"text": negative},
            [("clip", "CLIP", (3, 0))],
            [("CONDITIONING", "CONDITIONING")],
            title="CLIP Text Encode (Negative Prompt)" + (", unused at cfg 1" if sampling.guidance == 1 else ""),
        ),
        Node(
            6,
            LATENT_NODES[channels],
            {"width": width, "height": height, "length": frames, "batch_size": 1},
            [("vae", "VAE", (10, 0))] if channels == 48 else [],
            [("LATENT", "LATENT")],
        ),  # Wan 2.2's needs the VAE
        Node(10, "VAELoader", {"vae_name": VAES[channels]}, outputs=[("VAE", "VAE")]),
        Node(11, "VAEDecode", {}, [("samples", "LATENT", (9, 0)), ("vae", "VAE", (10, 0))], [("IMAGE", "IMAGE")]),
        Node(
            12,
            "SaveAnimatedWEBP",
            {"filename_prefix": "wanlite", "fps": 16, "lossless": False, "quality": 90, "method": "default"},
            [("images", "IMAGE", (11, 0))],
        ),
    ]
    conditioning = [("positive", "CONDITIONING", (4, 0)), ("negative", "CONDITIONING", (5, 0))]
    if c["sigmas"] is None:  # ComfyUI's own scheduler reproduces the schedule exactly
        nodes.append(
            Node(
                9,
                "KSampler",
                {
                    "seed": seed,
                    "steps": c["steps"],
                    "cfg": c["cfg"],
                    "sampler_name": c["sampler_name"],
                    "scheduler": c["scheduler"],
                    "denoise": 1.0,
                },
                [("model", "MODEL", (2, 0)), *conditioning, ("latent_image", "LATENT", (6, 0))],
                [("LATENT", "LATENT")],
                seeded=("seed",),
            )
        )
    else:  # the exact sigmas, as fixed-point text (ManualSigmas' parser does not read exponents)
        nodes += [
            Node(7, "KSamplerSelect", {"sampler_name": c["sampler_name"]}, outputs=[("SAMPLER", "SAMPLER")]),
            Node(
                8,
                "ManualSigmas",
                {"sigmas": ", ".join(f"{s:.8f}" for s in c["sigmas"])},
                outputs=[("SIGMAS", "SIGMAS")],
            ),
            Node(
                9,
                "SamplerCustom",
                {"add_noise": True, "noise_seed": seed, "cfg": c["cfg"]},
                [
                    ("model", "MODEL", (2, 0)),
                    *conditioning,
                    ("sampler", "SAMPLER", (7, 0)),
                    ("sigmas", "SIGMAS", (8, 0)),
                    ("latent_image", "LATENT", (6, 0)),
                ],
                [("output", "LATENT"), ("denoised_output", "LATENT")],
                seeded=("noise_seed",),
            ),
        ]
    return sorted(nodes, key=lambda n: n.id)


def api_format(nodes: list[Node]) -> dict:
    """The API ("prompt") format: {id: {class_type, inputs: widgets by name, links as [id, slot]}}."""
    return {
        str(n.id): {
            "class_type": n.type,
            "inputs": {**n.widgets, **{name: [str(src), slot] for name, _, (src, slot) in n.inputs}},
        }
        for n in nodes
    }


def ui_format(nodes: list[Node]) -> dict:
    """The UI (LiteGraph) format ComfyUI loads by drag and drop: nodes with sockets and widgets_values, links."""
    links, out_links = [], {}
    for n in nodes:
        for slot, (_, kind, (src, src_slot)) in enumerate(n.inputs):
            links.append([len(links) + 1, src, src_slot, n.id, slot, kind])
            out_links.setdefault((src, src_slot), []).append(len(links))
    incoming = {(link[3], link[4]): link[0] for link in links}
    ui = []
    for order, n in enumerate(nodes):
        values = []
        for name, value in n.widgets.items():
            values += [value, "fixed"] if name in n.seeded else [value]
        entry = {
            "id": n.id,
            "type": n.type,
            "pos": [300 * (n.id % 5), 220 * (n.id // 5)],
            "size": [320, 120],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [
                {"name": name, "type": kind, "link": incoming[(n.id, slot)]}
                for slot, (name, kind, _) in enumerate(n.inputs)
            ],
            "outputs": [
                {"name": name, "type": kind, "links": out_links.get((n.id, slot)), "slot_index": slot}
                for slot, (name, kind) in enumerate(n.outputs)
            ],
            "properties": {"Node name for S&R": n.type},
            "widgets_values": values,
        }
        if n.title:
            entry["title"] = n.title
        ui.append(entry)
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": ui,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"wanlite": {"sampling": None}},
        "version": 0.4,
    }


def write_workflows(
    model_file: Path, sampling: Sampling, channels: int = 16, overwrite: bool = False, **settings
) -> list[str]:  # settings: graph()'s (prompt, size, seed, loader ...)
    """Write `<stem>.workflow.json` (UI) and `<stem>.api.json` (API) beside a ComfyUI model file; their names."""
    nodes = graph(Path(model_file).name, sampling, channels, **settings)
    ui = ui_format(nodes)
    ui["extra"]["wanlite"]["sampling"] = sampling.to_dict()  # what the graph reproduces, for the record
    written = []
    for suffix, content in ((".workflow.json", ui), (".api.json", api_format(nodes))):
        out = Path(model_file).with_name(Path(model_file).stem + suffix)
        with atomic_path(out, overwrite, is_dir=False) as tmp:
            tmp.write_text(json.dumps(content, indent=1) + "\n")
        written.append(out.name)
    return written
