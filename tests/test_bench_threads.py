"""The threads benchmark runs end to end at a tiny size and records both thread counts."""
import json

import torch

from benchmarks import bench_threads


def test_bench_threads_quick_writes_results(tmp_path):
    bench_threads.main(["--quick", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("threads-cpu-*-quick.json")
    data = json.loads(js.read_text())
    assert data["operations_per_decompose"] > 0
    (size,) = data["sizes"]
    counts = {"1", str(torch.get_num_threads())}
    for row in ("decompose", "form Q", "eigh"):
        assert set(size["rows"][row]) == counts
        assert all(s["median"] > 0 and len(s["samples"]) == 3 for s in size["rows"][row].values())
    assert "| 32 | eigh |" in js.with_suffix(".md").read_text()


def test_load_processes_start_and_are_ended():
    procs = bench_threads.start_load(1, seconds=30)
    assert all(p.is_alive() for p in procs)
    bench_threads.stop_load(procs)
    assert not any(p.is_alive() for p in procs)
