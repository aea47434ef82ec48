"""python -m bilinear_kernels.sweep (and torchrun -m bilinear_kernels.sweep): the sweep command."""
import sys

from .sweep import main

sys.exit(main())
