"""Boolean environment switches (BILINEAR_KERNELS_DISABLE_*, TRITON_INTERPRET), read the same way
everywhere: 1, true, yes or on switch them on."""
from __future__ import annotations

import os


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
