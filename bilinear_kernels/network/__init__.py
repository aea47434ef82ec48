"""Whole networks: a stack of bilinear layers decomposed exactly through depth.

BilinearNetwork, the model and its inputs at every level (network), decompose_network and
NetworkDecomposition (network_decomposition), the truncation curve through depth
(network_truncation) and its figure (network_truncation_plot, matplotlib imported when called).

May import: the core modules at the top of the package (layer, decompose, directions, result,
_arrays), primitives/ and adapters/ (to read a torch module). io/, sweep/ and demo/ import from
here, never the other way.
"""
