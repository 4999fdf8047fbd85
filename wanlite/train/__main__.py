"""`python -m wanlite.train --config run.yaml [--resume] [--set key=value ...]`: what `wanlite distill` runs,
and what `accelerate launch -m wanlite.train ...` starts on every process."""

from __future__ import annotations

import argparse
import sys

from ..core.overrides import add_set_option, parse_overrides
from ..errors import WanliteError, describe
from .config import DistillConfig
from .loop import distill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wanlite distill", description="Distil a Wan teacher into a student.")
    parser.add_argument(
        "--config", required=True, help="a DistillConfig YAML (a run directory's config.yaml resumes it)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    add_set_option(parser, "config field")
    args = parser.parse_args(argv)
    try:
        cfg = DistillConfig.from_yaml(args.config)
        print(distill(cfg.replace(**parse_overrides(args.set)), resume=args.resume))
    except (WanliteError, OSError) as err:
        print(f"wanlite distill: {describe(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
