"""End-to-end benchmarks of bilinear_kernels against the tools users would otherwise reach for.

Run `python -m benchmarks.run --help`. Modules, one concern each:
  workloads  the W1..W5 shapes, the d-sweep, random weights scaled like trained ones, --scale
  peers      every way of getting eigenpairs that is measured: the peer (the published routes and
             the plain per-direction route), other tools (torch, SciPy, CuPy) and
             bilinear_kernels.decompose with each method
  forward    the W5 forward/backward comparison
  measure    timing (median of interleaved repeats), peak memory, accuracy against a float64 oracle
  targets    the pass/fail targets against the peer, computed from the measurements
  report     the JSON results file, the Markdown tables and the PNG plots
  run        the command line
"""
