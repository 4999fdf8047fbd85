"""`--set KEY=VALUE` on every command that takes settings (`wanlite distill`, the pipeline): one parser, YAML values
(so `lr=1e-4` is a float and `prompts=[a, b]` a list), one error."""

from __future__ import annotations

import yaml

from ..errors import ConfigError


def parse_overrides(items: list[str]) -> dict:
    """{key: YAML value} from `KEY=VALUE` strings; a malformed one is a ConfigError that shows the form."""
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=1e-4.")
        try:
            changes[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not YAML ({err}). Fix: quote it.") from None
    return changes


def add_set_option(parser, what: str = "setting") -> None:
    """The `--set` option itself, the same on every command: several after one flag, or the flag repeated."""
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} (a YAML value); several: --set a=1 b=2, or --set a=1 --set b=2",
    )
