"""The `bilinear-kernels demo` command: a bilinear classifier on scikit-learn's digits, decomposed
exactly in pixel space. Needs the `demo` extra (scikit-learn, matplotlib).

May import: anything in the package but the command line (cli.py), which dispatches to it.
"""
from .run import run_demo

__all__ = ["run_demo"]
