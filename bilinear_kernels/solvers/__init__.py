"""Eigensolvers behind `decompose`: dense (batched eigh), krylov (matrix-free block Lanczos),
lowrank (exact QR reduction when 2h < d)."""
