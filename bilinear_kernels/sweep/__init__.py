"""Runs over many directions and whole checkpoints: the library behind the command lines.

sweep: streamed, resumable, sharded sweeps into a result store (`python -m bilinear_kernels.sweep`,
see __main__.py); distributed: the torchrun side of a sweep; pipeline: checkpoint (or layer) +
directions -> results in memory, in a file or in a store, behind `bilinear-kernels decompose`;
output_directions: the --directions specs resolved against a model's readout.

May import: the core modules at the top of the package, solvers/, network/ and io/. Only the
command line (cli.py) and demo/ import from here.
"""
