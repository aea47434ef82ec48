"""Triton kernels, one file each. Every file holds the kernel, its launcher and, where it has a
backward, the autograd Function; the plain-torch twin each kernel is tested against (and falls
back to) lives beside the operation it accelerates or in the same file.

Nothing here is imported by the package at start-up: the operation that dispatches to a kernel
(`functional.bilinear_forward_kernel`, `interaction.interaction_kernel`) imports its module only
when it has chosen that kernel for CUDA inputs, so machines without Triton never touch it. Kernel
modules import only `_launch`, `backends` (what is available) and `fast_path_guard` (the canary
each kernel runs behind), never the modules above them.
"""
