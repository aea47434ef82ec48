"""The primitives benchmark runs end to end at tiny shapes and records what it measured."""
import json

from benchmarks import bench_primitives


def test_bench_primitives_tiny_run_writes_results(tmp_path):
    data = bench_primitives.main(["--scale", "0.004", "--repeats", "1", "--note", "a test", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("primitives-cpu-*-scale0.004.json")
    assert json.loads(js.read_text())["command"].endswith("--out " + str(tmp_path))
    names = [row["name"] for row in data["rows"]]
    assert names.count("top_interactions") == 2 and names.count("output_svd") == 2 and names.count("output_svd vs formed S Sᵀ") == 2 and "interaction_norms" in names
    for row in data["rows"]:
        if row["name"] == "project_input":
            continue
        assert row["ours"]["status"] == "ok" and len(row["ours"]["samples"]) == 1
        assert row["peer"]["status"] == "ok" and row["ratio"] > 0
        assert row["max_relative_difference"] < 1e-4  # ours and the einsum agree (float32)
    md = js.with_suffix(".md").read_text()
    assert "Note: a test" in md and "| top_interactions |" in md


def test_a_peer_too_big_for_memory_is_not_run():
    row = bench_primitives.run_pair("x", {}, lambda: bench_primitives.torch.zeros(1), lambda: 1 / 0,
                                    peer_bytes=1 << 60, repeats=1, compare=None)
    assert row["peer"]["status"].startswith("not run: needs about") and "ratio" not in row


def test_a_row_whose_peer_cannot_run_reuses_the_same_call_of_ours():
    first = bench_primitives.run_pair("first", {}, lambda: bench_primitives.torch.zeros(1), None,
                                      peer_bytes=None, repeats=1, compare=None)
    calls = []
    row = bench_primitives.run_pair("second", {}, lambda: calls.append(1), lambda: 1 / 0, peer_bytes=1 << 60,
                                    repeats=1, compare=None, same_ours=first)
    assert not calls and row["ours"]["median"] == first["ours"]["median"] and row["ours"]["reused_from"] == "first"


def test_bad_arguments_are_refused_in_one_line_naming_them(capsys):
    import pytest

    for argv in (["--budget", "0"], ["--repeats", "0"], ["--directions", "0"], ["--scale", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            bench_primitives.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"python -m benchmarks.bench_primitives: error: {argv[0]} must be") and argv[1] in err
