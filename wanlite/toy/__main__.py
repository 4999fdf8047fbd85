"""`python -m wanlite.toy train|eval|show`: make, score and look at a toy teacher.

python -m wanlite.toy train --out runs/toy/teacher --steps 3200     # what `make toy-teacher` runs
python -m wanlite.toy eval [--bundle DIR]                            # adherence over every caption
python -m wanlite.toy show "red circle moving left" --png out.png    # a filmstrip of samples (.gif: animated)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import WanliteError, describe


def _train(args) -> None:
    import torch

    from .show import filmstrip, save_gif
    from .teacher import TeacherConfig, build, evaluate, generate, save, teacher, train
    from .vae import ToyVAE
    from .world import batch, captions

    fields = {f.name for f in dataclasses.fields(TeacherConfig)}
    changes = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    config = dataclasses.replace(TeacherConfig(), **changes)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise WanliteError(f"{out} exists and is not empty. Fix: another --out, or --overwrite.")
    print(f"toy teacher: {config.spec()}; {config.steps} steps of {config.batch} clips on {args.device}", flush=True)
    vae = ToyVAE.fit()
    result = train(config, vae=vae, device=args.device, log=lambda m: print(m, flush=True))
    print(result, flush=True)
    extra = {
        "command": " ".join(["python -m wanlite.toy"] + sys.argv[1:]),
        "device": args.device,
        "torch": torch.__version__,
        "vae_psnr_db": round(vae.psnr(batch(captions(), list(range(10_000, 10_048)))), 2),
    }  # held-out clips
    result.model.to("cpu")
    save(result, out, extra=extra, overwrite=args.overwrite)
    if not args.no_eval:  # score what ships (the bf16 file, read back), against the same net untrained
        shipped = teacher(out)
        kw = dict(steps=20, guidance=4.0, shift=config.shift, vae=vae)
        teacher_score, random_score = evaluate(shipped, **kw), evaluate(build(config).eval(), **kw)
        print(f"trained teacher: {teacher_score}\nrandom weights:  {random_score}", flush=True)
        meta = json.loads((out / "toy.json").read_text())
        meta["adherence"] = {
            "teacher": teacher_score.as_dict(),
            "random_weights": random_score.as_dict(),
            "sampling": "unipc, 20 steps, guidance 4, shift = training shift, seed 0, every caption once",
        }
        (out / "toy.json").write_text(json.dumps(meta, indent=2) + "\n")
        shown = captions()[::7]  # a look at what it draws: every colour, shape and direction appears
        videos = generate(shipped, shown, shift=config.shift, vae=vae)
        filmstrip(videos, shown).savefig(out / "samples.png", dpi=60)
        save_gif(videos, out / "samples.gif", scale=1)
    print(f"saved {out}", flush=True)


def _eval(args) -> None:
    from .teacher import evaluate, info, load_vae, teacher

    model = teacher(args.bundle)
    shift = info(args.bundle)["teacher_config"]["shift"]
    score = evaluate(
        model, steps=args.steps, guidance=args.guidance, shift=shift, seed=args.seed, vae=load_vae(args.bundle)
    )
    print(score)
    for caption, read in score.mistakes():
        print(f"  {caption!r} read as {read!r}")


def _show(args) -> None:
    from .show import filmstrip, save_gif
    from .teacher import generate, info, load_vae, teacher

    caps = args.captions
    videos = generate(
        teacher(args.bundle),
        caps,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        shift=info(args.bundle)["teacher_config"]["shift"],
        vae=load_vae(args.bundle),
    )
    if args.png.endswith(".gif"):
        save_gif(videos, args.png)
    else:
        filmstrip(videos, caps).savefig(args.png, dpi=80)
    print(f"wrote {args.png}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wanlite.toy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a toy teacher and write a bundle (teacher/, vae.safetensors, toy.json)")
    t.add_argument("--out", required=True, help="bundle directory to write")
    t.add_argument("--steps", type=int, help="optimiser steps (default 3200)")
    t.add_argument("--minutes", type=float, help="wall-clock cap (the run is reproducible only if it ends on --steps)")
    t.add_argument("--batch", type=int, help="clips per step")
    t.add_argument("--dim", type=int, help="hidden width (heads x 128)")
    t.add_argument("--num-heads", dest="num_heads", type=int)
    t.add_argument("--num-layers", dest="num_layers", type=int)
    t.add_argument("--ffn-dim", dest="ffn_dim", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--shift", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--device", default="cpu")
    t.add_argument("--no-eval", action="store_true", help="skip the adherence evaluation")
    t.add_argument("--overwrite", action="store_true")
    e = sub.add_parser("eval", help="adherence of a bundle's teacher over every caption")
    s = sub.add_parser("show", help="write a filmstrip PNG (or an animated .gif) of samples")
    s.add_argument("captions", nargs="+")
    s.add_argument("--png", default="toy.png")
    for p in (e, s):
        p.add_argument("--bundle", default=None, help="toy bundle (default: the shipped one)")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--guidance", type=float, default=4.0)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        {"train": _train, "eval": _eval, "show": _show}[args.cmd](args)
    except (WanliteError, OSError) as err:
        print(f"error: {describe(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
