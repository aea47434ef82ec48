"""benchmarks.gpu_check: its plan names steps that exist, with flags their scripts accept, within
the 8-minute budget; each step is time-boxed and a failing one is recorded, not fatal; without a
CUDA device it refuses with one line."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.workloads import NAMES

ROOT = Path(__file__).resolve().parents[1]
# what the report and the process starts cost beyond the steps' own limits
OVERHEAD_S = 20


def declared_flags(path: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", path.read_text()))


def module_file(name: str) -> Path:
    return ROOT / (name.replace(".", "/") + ".py")


def split_step(step):
    """(script file, its own arguments) for a step's command."""
    argv = list(step.argv)
    assert argv[0] == "python"
    if argv[1] == "-m":
        return module_file(argv[2]), argv[3:]
    return ROOT / argv[1], argv[2:]


@pytest.fixture
def steps(tmp_path):
    return gpu_check.plan(tmp_path, xdist=True)


def test_the_plan_fits_the_budget(steps):
    assert all(s.limit_s > 0 for s in steps)
    assert sum(s.limit_s for s in steps) + OVERHEAD_S <= gpu_check.BUDGET_S == 8 * 60


def test_the_plan_covers_what_a_gpu_must_verify(steps):
    names = [s.name for s in steps]
    for precision in ("highest", "high"):
        for what in ("forward", "interaction", "decompose"):
            assert f"{what}-{precision}" in names
    assert {"extension-build", "extension-import", "tests", "eigh"} <= set(names)


def test_every_step_names_existing_scripts_and_flags(steps):
    for step in steps:
        if step.argv[1:3] == ("-m", "pytest"):
            continue  # test_the_tests_step_names_existing_test_files
        script, args = split_step(step)
        assert script.is_file(), f"{step.name}: {script} does not exist"
        flags = {a.split("=")[0] for a in args if a.startswith("--")}
        if "--run-module" in args:  # gpu_check runs a module under a precision: check both parts
            split = args.index("--")
            own, rest = args[:split], args[split + 1:]
            assert {a for a in own if a.startswith("--")} <= declared_flags(script)
            script = module_file(args[args.index("--run-module") + 1])
            assert script.is_file()
            flags = {a for a in rest if a.startswith("--")}
            args = rest
        if script.name == "setup.py":
            continue
        assert flags <= declared_flags(script), f"{step.name}: {sorted(flags - declared_flags(script))}"
        if "--only" in args:
            assert set(args[args.index("--only") + 1].split(",")) == {"W2", "W3", "W4"} <= set(NAMES)


def test_the_tests_step_names_existing_test_files(steps):
    tests = next(s for s in steps if s.name == "tests")
    files = [a for a in tests.argv if a.startswith("tests/")]
    assert files == list(gpu_check.CUDA_TEST_FILES)
    assert all((ROOT / f).is_file() for f in files)
    assert "-n" in tests.argv
    assert "-n" not in next(s for s in gpu_check.plan(Path("x"), xdist=False) if s.name == "tests").argv


def test_a_step_past_its_limit_is_killed_and_recorded(tmp_path):
    step = gpu_check.Step("sleeper", ("python", "-c", "import time; print('started', flush=True); time.sleep(60)"), 1)
    record = gpu_check.run_step(step, tmp_path)
    assert record["timed_out"] and not record["ok"] and record["seconds"] < 30
    assert "started" in record["output_tail"]


def test_a_failing_step_is_recorded(tmp_path):
    step = gpu_check.Step("failing", ("python", "-c", "import sys; print('boom'); sys.exit(3)"), 30)
    record = gpu_check.run_step(step, tmp_path)
    assert record["returncode"] == 3 and not record["ok"] and not record["timed_out"]
    assert "boom" in record["output_tail"] and (tmp_path / "failing.log").is_file()


def test_plan_prints_without_a_gpu(capsys, tmp_path):
    assert gpu_check.main(["--plan", "--out", str(tmp_path)]) == 0
    assert f"(budget {gpu_check.BUDGET_S} s)" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a CUDA device")
def test_refuses_without_a_gpu(capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_run_module_sets_the_precision_and_passes_arguments(monkeypatch):
    seen = {}

    def fake_run_module(name, run_name, alter_sys):
        seen.update(name=name, argv=list(sys.argv), precision=torch.get_float32_matmul_precision())

    monkeypatch.setattr("runpy.run_module", fake_run_module)
    saved = torch.get_float32_matmul_precision()
    try:
        assert gpu_check.main(["--matmul-precision", "high", "--run-module", "benchmarks.run", "--", "--only", "W2"]) == 0
    finally:
        torch.set_float32_matmul_precision(saved)
    assert seen == {"name": "benchmarks.run", "argv": ["benchmarks.run", "--only", "W2"], "precision": "high"}


def test_every_step_runs_in_strict_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("BILINEAR_KERNELS_STRICT", raising=False)
    assert ("BILINEAR_KERNELS_STRICT", "1") in gpu_check.STEP_ENV
    step = gpu_check.Step("env", ("python", "-c", "import os; print('strict=' + os.environ['BILINEAR_KERNELS_STRICT'])"), 30)
    record = gpu_check.run_step(step, tmp_path)
    assert record["ok"] and "strict=1" in record["output_tail"]


def test_steps_on_the_fast_paths_record_their_canaries(steps, tmp_path):
    for step in steps:
        if step.name.startswith(("forward-", "decompose-")):
            args = list(step.argv)
            path = Path(args[args.index("--fast-paths") + 1])
            assert path.parent == tmp_path and path.name in step.results
        if step.name == "extension-import":
            assert "fast-paths-extension-import.json" in step.results


def test_run_module_writes_the_canary_checks_however_it_ends(monkeypatch, tmp_path):
    from bilinear_kernels import fast_path_guard as guard

    def module_that_fails_a_canary(name, run_name, alter_sys):
        guard.run(guard.TRITON_INTERACTION, torch.float16, None, "cuda:0", None, None, (),
                  lambda: (1.0, 4e-3))  # strict mode (set by the suite): raises
        raise AssertionError("not reached")

    monkeypatch.setattr("runpy.run_module", module_that_fails_a_canary)
    guard.reset()
    saved = torch.get_float32_matmul_precision()
    out = tmp_path / "fast-paths-x.json"
    try:
        with pytest.raises(guard.FastPathError, match="triton_interaction"):
            gpu_check.main(["--fast-paths", str(out), "--run-module", "benchmarks.run", "--"])
    finally:
        torch.set_float32_matmul_precision(saved)
        guard.reset()
    written = json.loads(out.read_text())
    assert written["strict"] is True
    (check,) = written["checks"]
    assert check["path"] == "triton_interaction" and check["state"] == "failed" and check["dtype"] == "float16"


def test_the_report_shows_every_canary_state():
    check = {"path": "triton_forward", "dtype": "bfloat16", "mode": "-", "device": "cuda:0", "state": "failed",
             "canary_ms": 812.5, "canary_error": 0.5, "tolerance": 0.03, "failure": "its canary differs"}
    step = {"name": "forward-highest", "ok": False, "timed_out": False, "returncode": 1, "seconds": 3.0,
            "limit_s": 40, "command": "x", "output_tail": "boom",
            "results": {"fast-paths-forward-highest.json": {"strict": True, "checks": [check]}}}
    report = {"command": "python -m benchmarks.gpu_check", "seconds_total": 3.0, "steps": [step],
              "environment": {"date": "2026-12-05", "torch": "2.11.0", "torch_eigh_route": "4096x512: syevd_loop"}}
    eigh_check = {**check, "path": "cusolver_eigh", "dtype": "float32", "state": "passed", "failure": None,
                  "canary_error": 2e-7, "tolerance": 1.9e-5, "canary_ms": 4.0}
    eigh_step = {**step, "name": "eigh", "ok": True, "results": {"eigh-h100-float32-quick.json": {"meta": {"fast_paths": [eigh_check]}}}}
    report["steps"].append(eigh_step)
    text = gpu_check.markdown(report)
    assert "| eigh | cusolver_eigh | float32 | - | cuda:0 | passed | 4.0 | 2e-07 / 1.9e-05 |  |" in text
    assert "| forward-highest | triton_forward | bfloat16 | - | cuda:0 | failed | 812.5 | 0.5 / 0.03 | its canary differs |" in text
    assert "torch_eigh_route: 4096x512: syevd_loop" in text
    step["results"] = eigh_step["results"] = {}
    assert "No step recorded a canary check." in gpu_check.markdown(report)
