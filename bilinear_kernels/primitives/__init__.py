"""The primitives: what one layer's interaction matrices Q(u) hold, read without decomposing them.

Entries and diagonals of Q(u) (entries), its largest entries (top_interactions), Frobenius and
spectral norms (norms), the SVD of the output map in hidden space (output_svd), the hidden Gram
blocks those share (hidden_gram), inner products and cosines between forms of one or two layers
(form_inner) and their exact moments under a Gaussian input (gaussian_moments).

May import: the core modules at the top of the package (layer, directions, interaction, memory,
threads, _arrays) and solvers/. Nothing at the core imports back from here.
"""
