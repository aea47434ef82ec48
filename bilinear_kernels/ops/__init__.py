"""Triton kernels, one file each. Every file holds the kernel, its launcher and, where it has a
backward, the autograd Function; the plain-torch twin each kernel is tested against (and falls
back to) lives beside the operation it accelerates or in the same file.

Nothing here is imported by the package at start-up: `backends.py` imports a kernel module only
when it has chosen that kernel for CUDA inputs, so machines without Triton never touch it.
"""
