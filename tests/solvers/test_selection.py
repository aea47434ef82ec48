"""The sign convention: each eigenvector's largest-magnitude entry positive, the first one on a tie."""
import torch


def test_signs_put_each_column_s_largest_entry_positive_and_the_first_on_a_tie():
    from bilinear_kernels.solvers.selection import fix_signs

    vectors = torch.tensor([[[0.2, -0.5, 0.6, 0.0], [-0.9, 0.5, -0.6, 0.0], [0.1, 0.1, 0.3, 0.0]]]).double()
    # columns: largest entry negative; a tie of -0.5 (first) and +0.5; a tie of +0.6 (first) and
    # -0.6; all zeros
    got = fix_signs(vectors)[0]
    want = torch.tensor([[-0.2, 0.5, 0.6, 0.0], [0.9, -0.5, -0.6, 0.0], [-0.1, -0.1, 0.3, 0.0]]).double()
    assert torch.equal(got, want)
    many = torch.randn(7, 9, 5, dtype=torch.float64)
    fixed = fix_signs(many)
    peak = fixed.abs().argmax(dim=-2, keepdim=True)
    assert bool((torch.gather(fixed, -2, peak) > 0).all()) and torch.equal(fixed.abs(), many.abs())
