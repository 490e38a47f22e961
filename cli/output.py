"""Printing results: real JSON with ``--json``, short human text otherwise."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def emit(args: argparse.Namespace, value: T, human: Callable[[T], str]) -> None:
    """Print ``value`` as JSON (``--json``) or as ``human(value)``."""
    if getattr(args, "json", False):
        json.dump(value, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        text = human(value)
        if text:
            print(text)


def warn(text: str) -> None:
    """A line on stderr (never mixed into JSON on stdout)."""
    print(text, file=sys.stderr)
