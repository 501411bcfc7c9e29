"""Names that reach paths or SQL identifiers: adapters, families, aliases, runs."""

from __future__ import annotations

import re

from lorafleet.errors import BadInput

# Letters, digits, '-', '_' and '.', starting with a letter or digit: safe in paths, URLs and
# as ClickHouse values; no '/', quotes, spaces or '..'.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(NAME_PATTERN.match(name)) and ".." not in name


def check_name(name: object, what: str = "name") -> str:
    """Return `name` if valid, else raise BadInput naming the field and the rule."""
    if not is_valid_name(name):
        raise BadInput(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return name  # type: ignore[return-value]
