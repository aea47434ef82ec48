"""Shared test set-up.

Without a CUDA device the Triton kernels run under Triton's interpreter (on CPU tensors). Triton
decides that when a kernel is decorated, so the variable is set here, before any test module
imports a kernel. The package itself only reports the variable (`backends()`): its dispatcher
still sends CPU tensors to the plain-torch paths, so other tests are unaffected.

Every test runs with BILINEAR_KERNELS_STRICT=1: a fast path that fails its canary or a call raises
instead of handing its work to its twin, so a kernel test (on a GPU or under the interpreter)
can never pass on the twin's answer. tests/test_fast_path_guard.py switches it off where it tests
the fallback itself.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["BILINEAR_KERNELS_STRICT"] = "1"
