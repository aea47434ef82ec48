"""plot_network_truncation draws the points it is given, on log axes where they span decades, and
refuses anything that is not a truncation curve."""
import pytest

pytest.importorskip("matplotlib")

from bilinear_kernels.network.network_truncation_plot import plot_network_truncation  # noqa: E402

CURVE = [{"rank": 4, "ranks": [4, 4], "relative_error": 0.3, "accuracy": 0.7},
         {"rank": 1, "ranks": [1, 1], "relative_error": 0.9, "accuracy": 0.2},
         {"rank": 16, "ranks": [16, 9], "relative_error": 1e-14, "accuracy": 0.95}]


def test_plot_draws_accuracy_and_error_against_rank(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plot_network_truncation(CURVE, ax=ax, full_accuracy=0.95)
    accuracy_line = ax.get_lines()[0]
    assert list(accuracy_line.get_xdata()) == [1, 4, 16]  # sorted by rank
    assert list(accuracy_line.get_ydata()) == pytest.approx([20, 70, 95])
    error_ax = [a for a in fig.axes if a is not ax][0]
    assert list(error_ax.get_lines()[0].get_ydata()) == [0.9, 0.3, 1e-14]
    assert error_ax.get_yscale() == "log" and ax.get_xscale() == "log"
    plt.close(fig)
    fig, ax = plt.subplots()
    plot_network_truncation([{**p, "network_accuracy": 0.96} for p in CURVE], ax=ax)
    assert list(ax.get_lines()[1].get_ydata()) == pytest.approx([96, 96])  # the full network's line
    plt.close(fig)
    path = plot_network_truncation(CURVE, tmp_path / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_labels_draws_the_error_alone():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plot_network_truncation([{k: v for k, v in p.items() if k != "accuracy"} for p in CURVE], ax=ax)
    assert len(fig.axes) == 1 and list(ax.get_lines()[0].get_ydata()) == [0.9, 0.3, 1e-14]
    plt.close(fig)


@pytest.mark.parametrize("bad", [[], None, [{"rank": 1}], [3]])
def test_plot_refuses_what_is_not_a_curve(bad):
    with pytest.raises(ValueError, match="curve"):
        plot_network_truncation(bad)
