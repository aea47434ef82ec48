"""Shared test set-up.

Without a CUDA device the Triton kernels run under Triton's interpreter (on CPU tensors). Triton
decides that when a kernel is decorated, so the variable is set here, before any test module
imports a kernel. The package itself only reports the variable (`backends()`): its dispatcher
still sends CPU tensors to the plain-torch paths, so other tests are unaffected.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
