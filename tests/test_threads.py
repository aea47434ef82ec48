"""The thread rule: one CPU thread for small factorizations or a busy machine, restored afterwards."""
import pytest
import torch

from bilinear_kernels import threads


def test_a_quiet_machine_keeps_torchs_threads_at_every_size():
    # measured: on a quiet machine two threads beat one from d = 64 up
    for n in (4, 64, 512, 4096):
        assert threads.cpu_threads_for(n, "cpu", busy=False, current=2) is None


def test_a_busy_machine_runs_small_factorizations_on_one_thread():
    assert threads.cpu_threads_for(64, "cpu", busy=True, current=2) == 1
    assert threads.cpu_threads_for(threads.BUSY_MAX_N - 1, "cpu", busy=True, current=8) == 1
    assert threads.cpu_threads_for(threads.BUSY_MAX_N, "cpu", busy=True, current=2) is None


def test_nothing_changes_on_one_thread_or_off_the_cpu():
    assert threads.cpu_threads_for(64, "cpu", busy=True, current=1) is None
    assert threads.cpu_threads_for(64, "meta", busy=True, current=4) is None


def test_busy_means_more_runnable_processes_than_cores():
    assert threads.machine_is_busy(load=3.0, cores=2)
    assert not threads.machine_is_busy(load=2.0, cores=2)  # our own two threads alone


def test_cpu_threads_sets_and_restores_the_count(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "cpu_threads_for", lambda n, device: 1)
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with threads.cpu_threads(64, "cpu"):
                assert torch.get_num_threads() == 1
                raise RuntimeError("restored even when the block raises")
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "cpu_threads_for", lambda n, device: None)
        with threads.cpu_threads(4096, "cpu"):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("busy, d, expected", [(True, 8, 1), (False, 8, 2), (True, threads.BUSY_MAX_N, 2)])
def test_decompose_runs_its_solver_under_the_rule_and_restores_the_count(monkeypatch, busy, d, expected):
    import importlib

    import bilinear_kernels as bk

    decompose_module = importlib.import_module("bilinear_kernels.decompose")  # the module, not the function

    monkeypatch.setattr(threads, "machine_is_busy", lambda *a, **k: busy)
    seen = []
    real = decompose_module._run_lanczos if d >= 512 else decompose_module._run_eigh

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        yield from real(*args, **kwargs)

    monkeypatch.setattr(decompose_module, "_run_lanczos" if d >= 512 else "_run_eigh", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        layer = bk.BilinearLayer(torch.randn(3, d, dtype=torch.float64), torch.randn(3, d, dtype=torch.float64))
        bk.decompose(layer, [0], k=2, method="lanczos" if d >= 512 else "eigh")
        assert seen == [expected]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
