"""bilinear_kernels: exact, fast eigendecomposition of bilinear layers f(x) = P((W x) ⊙ (V x))."""
from .backends import backends
from .decompose import decompose
from .entries import interaction_diagonal, interaction_entries
from .functional import bilinear
from .interaction import interaction_matrices, interaction_tensor
from .layer import BilinearLayer
from .network import BilinearNetwork
from .network_decomposition import NetworkDecomposition, decompose_network
from .network_truncation import network_truncation_curve
from .collect import collect_inputs
from .data_analysis import top_activations, truncation_curve
from .model_directions import sae_decoder_basis, sae_encoder_directions, unembedding_directions
from .norms import interaction_norms
from .output_svd import output_svd
from .result import DecompositionResult
from .store import open_results
from .solvers.krylov import ConvergenceWarning
from .top_interactions import top_interactions

__version__ = "0.1.0"

__all__ = [
    "BilinearLayer", "BilinearNetwork", "ConvergenceWarning", "DecompositionResult", "backends", "bilinear",
    "decompose", "interaction_matrices", "interaction_tensor", "open_results", "__version__",
    "collect_inputs", "NetworkDecomposition", "decompose_network",
    "network_truncation_curve",
    "top_activations", "truncation_curve",
    "sae_decoder_basis", "sae_encoder_directions", "unembedding_directions",
    "interaction_diagonal", "interaction_entries", "interaction_norms", "output_svd", "top_interactions",
]
