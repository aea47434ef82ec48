"""Argument types shared by the command lines (`bilinear-kernels` and `python -m bilinear_kernels.sweep`):
each turns one command-line word into a value or an argparse error that names what was expected."""
from __future__ import annotations

import argparse
import os


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def tracebacks_wanted() -> bool:
    """BILINEAR_KERNELS_TRACEBACK=1: let a user error raise with its traceback instead of the
    one-line message the command lines print."""
    return os.environ.get("BILINEAR_KERNELS_TRACEBACK", "").strip() not in ("", "0")
