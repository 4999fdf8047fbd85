"""The `wanlite` command: inspect, convert, encode, distill, compare. Errors print one message and exit 2."""

from __future__ import annotations

import argparse
import json
import sys


def _inspect(args) -> int:
    from .errors import FormatError
    from .formats import comfy, inspect_wan

    source = inspect_wan(args.path, expert=args.expert, **_hub(args))
    print(repr(source))
    try:
        pruning, problem = source.pruning, None
    except FormatError as err:  # the record beside the weights is missing or edited: the rest still shows
        pruning, problem = None, err
        try:
            entry = json.loads(source.metadata["wanlite.pruning"])
        except ValueError:
            entry = None
        if isinstance(entry, dict) and entry.get("summary"):
            print(f"  pruned from its teacher (summary; the record is unreadable): {entry['summary']}")
    if pruning is not None:
        print(f"  pruned from its teacher: {pruning!r}")
        if args.full:
            print("  pruning record: " + pruning.to_json())
    if source.quant is not None and args.full:
        print("  quantized tensors: " + ", ".join(source.quant.quantized))
    if source.sampling is not None:
        print(f"  samples with its own settings: {source.sampling!r}\n    ComfyUI: {source.sampling.comfyui()}")
    if source.provenance:
        shown = {k: v for k, v in source.provenance.items() if args.full or len(str(v)) <= 200}
        print("  wanlite provenance: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        if len(shown) < len(source.provenance):
            print(f"    ({len(source.provenance) - len(shown)} long entries hidden; --full shows them)")
    if source.layout == "single-file":
        print(repr(comfy.check(source.path)))
    else:
        problems = source.spec.comfyui_problems()
        verdict = "ComfyUI-compatible shapes" if not problems else "ComfyUI would mis-load it:"
        print(f"ComfyUI verdict: {verdict}")
        for p in problems:
            print(f"  - {p}")
        if not problems:
            print(f"  ComfyUI loads one file: wanlite convert {args.path} OUT.safetensors --layout comfyui")
    if problem is not None:
        print(f"wanlite inspect: {problem}", file=sys.stderr)
        return 2
    return 0


def _convert(args) -> int:
    from .formats import load_wan, parse_dtype, save_wan

    dtype = parse_dtype(args.dtype)
    model = load_wan(args.src, torch_dtype=dtype, expert=args.expert, **_hub(args))
    provenance = dict(model.wanlite_source.provenance)
    provenance.setdefault("converted_from", str(args.src))
    source_quant = model.wanlite_source.quant
    if source_quant is not None:  # dequantized on load: the new file carries both quantizations' errors
        provenance["dequantized_from"] = source_quant.format
        print(
            f"note: {args.src} is quantized ({source_quant.format}); it was dequantized on load, so "
            f"{'re-quantizing' if args.quant else 'this export'} keeps its error"
            + (" and adds the new one. Convert from the bf16/fp32 original for the best file." if args.quant else ".")
        )
    export = save_wan(
        model,
        args.dst,
        layout=args.layout,
        dtype=dtype,
        provenance=provenance,
        overwrite=args.overwrite,
        allow_non_comfyui=args.allow_non_comfyui,
        comfyui_root=args.comfyui_root,
        quant=args.quant,
    )
    print(repr(export))
    return 0


def _lora_remap(args) -> int:
    from .compress.lora import remap

    print(repr(remap(args.lora, args.student, out=args.out, format=args.format, overwrite=args.overwrite)))
    return 0


def _quant_report(args) -> int:
    from .runs import quant_report

    report = quant_report(
        args.model, args.formats, args.out, toy_world=True if args.toy else None, work_dir=args.keep_files
    )
    print(repr(report))
    if args.out:
        print(f"written: {args.out}/quant_report.md, quant_report.json")
    return 0


def _compare(args) -> int:
    from .formats import parse_dtype
    from .runs import compare_paths

    given = {
        k: v
        for k, v in dict(
            steps=args.steps, guidance=args.guidance, shift=args.shift, scheduler=args.scheduler, repeats=args.repeats
        ).items()
        if v is not None
    }
    comparison = compare_paths(
        args.teacher,
        args.student,
        prompts=args.prompts,
        out_dir=args.out,
        vae=args.vae,
        prompts_cache=args.prompts_cache,
        text_encoder=args.text_encoder,
        run_dir=args.run_dir,
        overrides=given,
        torch_dtype=parse_dtype(args.dtype),
        student_steps=args.student_steps,
    )
    print(repr(comparison))
    return 0


def _encode(args) -> int:
    from .errors import ConfigError
    from .formats import parse_dtype

    common = dict(batch=args.batch, overwrite=args.overwrite, shard_size=args.shard_size, low_memory=args.low_memory)
    if args.toy is not None:
        from .runs import encode_toy

        encode_toy(args.out, samples=args.toy, seed=args.seed, **common)
        return 0
    from .train.encode import encode, gather, load_encoders

    if bool(args.videos) == bool(args.prompts):
        raise ConfigError("give --videos (with --captions) or --prompts (or --toy N).")
    if not (args.models or args.text_encoder):
        raise ConfigError("--models WAN_DIR_OR_HUB_ID is required (or --vae and --text-encoder).")
    encoders = load_encoders(
        args.models,
        vae=args.vae,
        text_encoder=args.text_encoder,
        tokenizer=args.tokenizer,
        device=args.device,
        dtype=parse_dtype(args.dtype) if args.dtype else None,
        revision=args.revision,
        need_vae=bool(args.videos),
        text_length=args.text_length,
    )
    if args.low_memory and encoders.modules.get("vae") is not None:
        encoders.modules["vae"].enable_tiling()
        encoders.modules["vae"].enable_slicing()
    if args.prompts:
        from pathlib import Path

        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        result = encode(args.out, encoders, prompts=lines, negative=args.negative, **common)
        return 0
    else:
        clips, skipped = gather(args.videos, args.captions, folder_fps=args.fps)
        result = encode(
            args.out,
            encoders,
            clips=clips,
            skipped=skipped,
            size=args.size,
            frames=args.frames,
            fps=args.fps,
            bucket=args.bucket,
            split=args.split,
            negative=args.negative,
            **common,
        )
    return 0 if result.encoded or result.already else 2


def _hub_options(p) -> None:
    """Where to read in a directory or a Hub repository (org/name: only the transformer's files are fetched)."""
    p.add_argument("--subfolder", help="folder (or one .safetensors file) inside the directory or Hub repository")
    p.add_argument("--revision", help="Hub branch, tag or commit (for an org/name source)")
    p.add_argument("--variant", help="diffusers weight variant to read, e.g. fp16 (diffusion_pytorch_model.fp16...)")


def _hub(args) -> dict:
    return {"subfolder": args.subfolder, "revision": args.revision, "variant": args.variant}


def build_parser() -> argparse.ArgumentParser:
    # Long by nature: one argparse declaration per command and option, read straight down like --help.
    from .formats.quant import QUANTS

    parser = argparse.ArgumentParser(
        prog="wanlite",
        description=__doc__,
        epilog="wanlite distill --config RUN.yaml [--resume] [--set KEY=VALUE]: "
        "distil a student (wanlite distill --help). wanlite sweep --grid FILE [--jobs N] [--resume]: "
        "train and rank many students (wanlite sweep --help).",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="layout, Wan config, parameters, dtypes and the ComfyUI verdict of any Wan path")
    p.add_argument("path")
    p.add_argument("--expert", choices=["high_noise", "low_noise"], help="Wan2.2 A14B expert to read")
    p.add_argument(
        "--full",
        action="store_true",
        help="print the whole pruning record, every provenance entry and every quantized tensor",
    )
    _hub_options(p)
    p.set_defaults(run=_inspect)

    p = sub.add_parser("convert", help="rewrite a Wan transformer in another layout")
    p.add_argument("src")
    p.add_argument("dst", nargs="?", help="output directory (wan, diffusers) or .safetensors file (comfyui)")
    p.add_argument("--layout", choices=["wan", "comfyui", "diffusers"], help="default: wan (with --quant: comfyui)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: as stored (comfyui: bf16)")
    p.add_argument(
        "--quant",
        choices=list(QUANTS),
        help="one quantized ComfyUI file: fp8_e4m3fn, fp8_scaled (legacy ComfyUI scaled fp8), or a GGUF type",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--expert", choices=["high_noise", "low_noise"], help="Wan2.2 A14B expert to read")
    p.add_argument("--comfyui-root", help="write straight into ComfyUI/models/diffusion_models/ of this install")
    p.add_argument("--allow-non-comfyui", action="store_true", help="export even if ComfyUI would mis-load it")
    _hub_options(p)
    p.set_defaults(run=_convert)

    p = sub.add_parser("lora", help="LoRAs for a student: `wanlite lora remap LORA --student STUDENT --out OUT`")
    lora = p.add_subparsers(dest="lora_command", required=True)
    p = lora.add_parser("remap", help="rewrite a LoRA trained on the teacher for the pruned student, exactly")
    p.add_argument("lora", help="the teacher's LoRA (.safetensors: ComfyUI/official, kohya/musubi or diffusers names)")
    p.add_argument("--student", required=True, help="the student (any Wan path of it; it carries its pruning record)")
    p.add_argument("--out", required=True, help="the student's LoRA (.safetensors)")
    p.add_argument("--format", choices=["comfyui", "kohya", "diffusers"], help="key names to write (default: as given)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(run=_lora_remap)

    p = sub.add_parser("encode", help="videos + captions (or prompts) -> a latents (or embeddings) cache for distill")
    p.add_argument("--videos", help="a folder of videos / frame folders, or a .txt list of paths")
    p.add_argument("--captions", default="sidecar", help="'sidecar' (NAME.txt beside each video), a .csv or .jsonl")
    p.add_argument("--prompts", help="a text file, one prompt a line: an embeddings-only cache (data-free runs)")
    p.add_argument("--toy", type=int, metavar="N", help="N toy-world clips through the toy VAE and text encoder")
    p.add_argument("--seed", type=int, default=0, help="--toy: the first clip's seed")
    p.add_argument("--models", help="a Diffusers-format Wan directory or Hub id (vae/, text_encoder/, tokenizer/)")
    p.add_argument("--vae", help="the VAE instead: a diffusers vae/ folder or a single .safetensors (ComfyUI's)")
    p.add_argument("--text-encoder", help="the umT5 text encoder instead: a transformers folder")
    p.add_argument("--tokenizer", help="the tokenizer folder (default: tokenizer/ beside the text encoder)")
    p.add_argument("--revision", help="Hub branch, tag or commit (for an org/name --models)")
    p.add_argument("--out", required=True, help="the cache directory (re-running resumes it)")
    p.add_argument("--size", default="480x832", help="HEIGHTxWIDTH to resize and centre-crop to (default 480x832)")
    p.add_argument("--frames", type=int, default=81, help="frames per sample, 4k+1 (default 81)")
    p.add_argument("--fps", type=float, default=16.0, help="resample clips to this frame rate (default 16)")
    p.add_argument("--bucket", action="store_true", help="aspect-ratio buckets around --size: one cache each")
    p.add_argument("--split", type=int, default=1, metavar="K", help="cut a long clip into up to K samples")
    p.add_argument("--batch", type=int, default=1, help="clips per VAE / text-encoder call")
    p.add_argument("--negative", help="the negative prompt to embed (default: Wan's own)")
    p.add_argument("--text-length", type=int, default=512, help="umT5 tokens per prompt (Wan: 512)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="encoder dtype (default bf16 on GPU, else fp32)")
    p.add_argument("--device", help="cuda, cpu, ... (default: the GPU when present)")
    p.add_argument("--low-memory", action="store_true", help="VAE tiling; VAE and text encoder never both on device")
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard (what a kill can lose at most)")
    p.add_argument("--overwrite", action="store_true", help="start the cache over (it is replaced when done)")
    p.set_defaults(run=_encode)

    p = sub.add_parser("compare", help="compare a student with its teacher; write figures, metrics and a report")
    p.add_argument("teacher")
    p.add_argument("student")
    p.add_argument("--prompts", nargs="*", help="captions to sample (toy world; or to pick from --prompts-cache)")
    p.add_argument("--prompts-cache", help="prompt embeddings written by `wanlite encode --prompts` (real teachers)")
    p.add_argument("--text-encoder", help="umT5 to encode --prompts with: a Diffusers Wan directory or Hub id")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument(
        "--steps",
        type=int,
        help="the teacher's steps (default 20; a toy bundle brings its own); a student samples at its own settings",
    )
    p.add_argument("--guidance", type=float, help="the teacher's classifier-free guidance scale")
    p.add_argument("--shift", type=float, help="flow shift of the teacher's schedule")
    p.add_argument("--scheduler", choices=["unipc", "euler", "lcm"], help="the teacher's solver")
    p.add_argument("--repeats", type=int, help="timed forwards per model")
    p.add_argument(
        "--student-steps",
        type=int,
        help="sample the student at K steps of its own sampler instead of its recorded count (a guided student: any K)",
    )
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="both models run in this dtype")
    p.add_argument("--vae", help="a local diffusers AutoencoderKLWan directory (pixel PSNR/SSIM)")
    p.add_argument("--run-dir", help="a distillation run directory: its loss curves go in the report")
    p.set_defaults(run=_compare)

    p = sub.add_parser("quant-report", help="what each quantized format costs: size, bits/weight, errors, adherence")
    p.add_argument("model")
    p.add_argument("--formats", nargs="*", choices=["bf16", *QUANTS], help="default: bf16 and every quant type")
    p.add_argument("--out", help="write quant_report.md/.json here")
    p.add_argument("--toy", action="store_true", help="a toy-world model (auto-detected in toy bundles and runs)")
    p.add_argument("--keep-files", help="keep the exported files in this directory")
    p.set_defaults(run=_quant_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import WanliteError, describe

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["distill"]:  # its own parser (python -m wanlite.train): options pass through untouched
        from .train.__main__ import main as distill_main

        return distill_main(argv[1:])
    if argv[:1] == ["sweep"]:  # wanlite sweep --grid FILE [--jobs N] [--resume]: its own parser too
        from .sweep import main as sweep_main

        return sweep_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "convert" and args.dst is None and not args.comfyui_root:
        print("wanlite convert: DST is required (or --comfyui-root for --layout comfyui)", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.command != "encode":
            raise
        print("wanlite encode: interrupted; the finished shards are kept, run it again to continue", file=sys.stderr)
        return 130
    except (WanliteError, OSError) as err:
        if args.debug:
            raise
        print(f"wanlite {args.command}: {describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
