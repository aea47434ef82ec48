"""The forms benchmark runs end to end at tiny shapes and records what it measured."""
import json

import pytest

from benchmarks import bench_forms


def test_bench_forms_tiny_autoencoder_run_writes_results(tmp_path):
    data = bench_forms.main(["--quick", "--only", "autoencoder", "--note", "a test", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("forms-cpu-*-autoencoder-quick.json")
    assert json.loads(js.read_text())["command"].endswith("--out " + str(tmp_path))
    rows = data["cases"]["autoencoder"]
    assert [row["name"] for row in rows] == ["single latents", "mixes of 5 latents"]
    for row in rows:
        assert row["method_ran"] == "support"
        assert row["ours"]["forms_timed"] == 16 and not row["ours"]["scaled"]
        assert row["published"]["forms_timed"] == 2 and row["published"]["scaled"]
        # a scaled timing is the sample's median × forms / sample
        assert row["published"]["seconds_all"] == pytest.approx(row["published"]["median"] * 8)
        assert row["published_over_ours"] > 0 and row["eigh_over_ours"] > 0
        # the three routes found the same eigenvalues (float32)
        assert max(row["max_relative_difference"].values()) < 1e-4
    md = js.with_suffix(".md").read_text()
    assert "Note: a test" in md and "| single latents |" in md and "scaled" in md


def test_bad_arguments_are_refused_in_one_line_naming_them(capsys):
    for argv, name in ((["--latents", "0"], "--latents"), (["--sample", "0"], "--sample"),
                       (["--repeats", "0"], "--repeats"), (["--latents", "4", "--sample", "5"], "--sample"),
                       (["--only", "nothing"], "--only")):
        with pytest.raises(SystemExit) as exit_info:
            bench_forms.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("python -m benchmarks.bench_forms: error:") and name in err


def test_the_comparison_case_runs_forms_comparison_with_its_own_results_file(tmp_path):
    assert bench_forms.main(["--quick", "--only", "comparison", "--out", str(tmp_path)]) == {}
    (js,) = tmp_path.glob("forms-comparison-cpu-*-quick.json")
    rows = json.loads(js.read_text())["rows"]
    assert {row["name"] for row in rows} >= {"similarity, classes", "gaussian moments, two models"}
    assert not list(tmp_path.glob("forms-cpu-*"))
