"""One YAML loader and one key check for every configuration file (benchmarks, suites, recipes, cards, ...).

Every mistake is a UserError that names the file first: `PATH: what is wrong; what was expected`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from silc_eval.core.errors import UserError

# libyaml's loader when PyYAML was built with it (about 10x faster on the zoo cards), else the pure-Python one;
# both build the same safe types.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> Any:
    """Return the parsed YAML document at path; an unreadable file or invalid YAML is a UserError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: could not be read ({exc.__class__.__name__}: {exc})") from None
    try:
        return yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Return the YAML mapping at path; anything but a mapping at the top level is a UserError naming path."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level")
    return data


def check_keys(where: Path | str, what: str, data: dict, required: Iterable[str], optional: Iterable[str]) -> None:
    """Raise a UserError naming where for the first unknown key or missing required key of data; returns None."""
    required, optional = set(required), set(optional)
    unknown = sorted(set(data) - required - optional, key=str)
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' in {what}; allowed keys: "
                        f"{', '.join(sorted(required | optional))}")
    missing = sorted(required - set(data))
    if missing:
        raise UserError(f"{where}: missing field '{missing[0]}' in {what}; required: {', '.join(sorted(required))}")
