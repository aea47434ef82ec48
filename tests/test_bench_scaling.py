"""The scaling benchmark runs end to end at tiny sizes: a log-log plot and an exponent per curve."""
import json

import torch

from benchmarks import bench_scaling, report


def test_bench_scaling_quick_writes_the_plot_and_exponents(tmp_path):
    threads = torch.get_num_threads()
    try:
        bench_scaling.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (js,) = tmp_path.glob("scaling-cpu-*-quick.json")
    data = json.loads(js.read_text())
    assert [w["shapes"]["d"] for w in data["sweep"]] == [16, 32, 64]
    assert (tmp_path / data["plot"]).read_bytes().startswith(b"\x89PNG")
    assert data["exponents"][report.PEER_SERIES] is not None
    assert data["exponents"]["bk.decompose, method='auto'"] is not None
    md = js.with_suffix(".md").read_text()
    assert "| exponent |" in md and report.PEER_SERIES in md
