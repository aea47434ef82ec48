"""The Krylov solver's matrix-free product against its plain twin and a float64 oracle."""
import numpy as np
import pytest
import torch

from bilinear_kernels.interaction import InteractionOperator
from bilinear_kernels.solvers.matrix_free import MatrixFreeProduct
from helpers import oracle_q, random_weights


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("b, m", [(1, 1), (3, 2), (2, 7)])
def test_rows_product_matches_the_twin_and_the_oracle(b, m, dtype, rtol):
    weights = random_weights(24, 40, 6, seed=9)
    rng = np.random.default_rng(b * 10 + m)
    u = rng.standard_normal((b, 6))
    x = rng.standard_normal((b, m, 24))
    w, v = (torch.as_tensor(weights[n], dtype=dtype) for n in ("w", "v"))
    c = torch.as_tensor(u @ weights["p"], dtype=dtype)
    xt = torch.as_tensor(x, dtype=dtype)
    got = MatrixFreeProduct(w, v).apply_rows(c, xt)
    twin = InteractionOperator(w, v).apply_rows(c, xt)
    want = np.einsum("bij,bmj->bmi", oracle_q(weights, u), x)
    scale = np.abs(want).max()
    assert got.shape == (b, m, 24) and got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=rtol * scale * 10)
    np.testing.assert_allclose(got.double().numpy(), twin.double().numpy(), rtol=0, atol=rtol * scale * 10)
