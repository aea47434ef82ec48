"""Eigensolvers behind `decompose`: dense (batched eigh), krylov (matrix-free block Lanczos),
lowrank (exact QR reduction when 2h < d).

May import: the small core modules at the top of the package (extension, fast_path_guard, and
interaction for the low-rank reduction); decompose dispatches to here.
"""
