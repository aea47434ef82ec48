"""bilinear_kernels: exact, fast eigendecomposition of bilinear layers f(x) = P((W x) ⊙ (V x))."""
# the core
from .backends import backends
from .decompose import decompose
from .functional import bilinear
from .interaction import interaction_matrices, interaction_tensor
from .layer import BilinearLayer
from .result import DecompositionResult
from .solvers.krylov import ConvergenceWarning
# one layer's forms, read without decomposing them
from .primitives.entries import interaction_diagonal, interaction_entries
from .primitives.form_inner import interaction_inner, interaction_similarity
from .primitives.gaussian_moments import gaussian_moments
from .primitives.norms import interaction_norms
from .primitives.output_svd import output_svd
from .primitives.top_interactions import top_interactions
# models, SAEs and data
from .adapters.collect import collect_inputs
from .adapters.data_analysis import top_activations, truncation_curve
from .adapters.model_directions import (overlap_mix_direction, sae_decoder_basis, sae_encoder_directions,
                                        unembedding_directions)
# whole networks
from .network.network import BilinearNetwork
from .network.network_decomposition import NetworkDecomposition, decompose_network
from .network.network_truncation import network_truncation_curve
# results on disk
from .io.store import open_results

__version__ = "0.1.0"

__all__ = [
    "BilinearLayer", "BilinearNetwork", "ConvergenceWarning", "DecompositionResult", "backends", "bilinear",
    "decompose", "interaction_matrices", "interaction_tensor", "open_results", "__version__",
    "collect_inputs", "NetworkDecomposition", "decompose_network",
    "network_truncation_curve",
    "top_activations", "truncation_curve",
    "sae_decoder_basis", "sae_encoder_directions", "unembedding_directions", "overlap_mix_direction",
    "interaction_diagonal", "interaction_entries", "interaction_norms", "output_svd", "top_interactions",
    "interaction_inner", "interaction_similarity", "gaussian_moments",
]
