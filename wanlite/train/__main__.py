"""`python -m wanlite.train --config run.yaml [--resume] [--set key=value ...]`: what `wanlite distill` runs,
and what `accelerate launch -m wanlite.train ...` starts on every process."""

from __future__ import annotations

import argparse
import sys

import yaml

from ..errors import ConfigError, WanliteError, describe
from .config import DistillConfig
from .loop import distill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wanlite distill", description="Distil a Wan teacher into a student.")
    parser.add_argument(
        "--config", required=True, help="a DistillConfig YAML (a run directory's config.yaml resumes it)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (a YAML value)"
    )
    args = parser.parse_args(argv)
    try:
        cfg = DistillConfig.from_yaml(args.config)
        changes = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=1e-4.")
            try:
                changes[key] = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ConfigError(f"--set {item!r}: the value is not YAML ({err}). Fix: quote it.") from None
        print(distill(cfg.replace(**changes), resume=args.resume))
    except (WanliteError, OSError) as err:
        print(f"wanlite distill: {describe(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
