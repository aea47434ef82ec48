"""The data-analysis benchmark runs at tiny sizes, checks both sides agree, and writes its files."""
import json

import torch

from benchmarks.bench_data_analysis import main


def test_quick_run_writes_results(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = main(["--quick", "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "quick")])
    finally:
        torch.set_num_threads(threads)
    assert [r["analysis"] for r in result["rows"]] == ["truncation_curve", "top_activations"]
    assert all(r["ours_s"] > 0 and r["loop_s"] > 0 for r in result["rows"])
    written = json.loads((tmp_path / "quick.json").read_text())
    assert written["shapes"]["d"] == 24 and "cpu" in written["environment"]
    assert "| truncation_curve |" in (tmp_path / "quick.md").read_text()
