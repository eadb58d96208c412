"""Generating and grading quadratic equations with worked solutions."""

import json
import math
import os
import re
import shutil
from pathlib import Path

# Numbers are ASCII only: int() and float() alone also read other scripts' digits (`١`, `１`),
# surrounding white space and `_` separators, and float() reads `nan` and `inf`.
_INTEGER = re.compile(r"[-+]?[0-9]+")
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def swap_in(built: Path, target: Path) -> None:
    """Rename the finished directory `built` to `target`, replacing what was there. The old one is
    moved aside first and deleted last, and put back if we are stopped between the two renames,
    so an interrupt leaves either the old directory or the new one, never neither."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if target.exists():
            target.rename(old)
        built.rename(target)
    finally:
        if old.exists() and not target.exists():
            old.rename(target)
        shutil.rmtree(old, ignore_errors=True)


class QuadlabError(Exception):
    """Bad input from a user (an option, a file, a directory). The command line prints the
    message as one line and exits 2, so the message says what is wrong and how to fix it."""


def ascii_int(text: str) -> int:
    """An integer written as an optional sign and the digits 0-9, nothing else; ValueError otherwise."""
    if not isinstance(text, str) or not _INTEGER.fullmatch(text):
        raise ValueError(f"{text!r} is not an integer written with the digits 0-9")
    return int(text)


def ascii_float(text: str) -> float:
    """A finite number written with the digits 0-9, e.g. `2`, `-0.5`, `3e-4`; ValueError otherwise."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text) or not math.isfinite(value := float(text)):
        raise ValueError(f"{text!r} is not a finite number written with the digits 0-9")
    return value


def json_objects(lines, source: str, hint: str) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line of JSON Lines; a line that is not a JSON object
    is a one-line QuadlabError naming `source` and the line, ending with `hint` (how to fix it)."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise QuadlabError(f"{source} line {number} is not JSON ({err.msg}); {hint}") from None
        if not isinstance(value, dict):
            raise QuadlabError(f"{source} line {number} is not a JSON object; {hint}")
        out.append((number, value))
    return out
