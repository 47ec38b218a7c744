"""benchmarks/device_check.py in its CPU mode: every section runs its code path and reports numbers in the
JSON (the GPU run itself needs a GPU; this is the same script with --device cpu --quick and smaller knobs)."""
from __future__ import annotations

import json
import math

import torch

import device_check  # benchmarks/ is on the test path (pyproject: pythonpath)
import step_time

CANNED = """\
tests/test_cuda.py::test_rates_on_device PASSED                           [ 25%]
tests/test_cuda.py::test_toy_study_on_device FAILED                       [ 50%]
tests/test_cuda.py::test_every_variant_forward_and_backward[crate-g] SKIPPED (needs CUDA: torch.cuda.is_available() is False) [ 75%]
tests/test_cuda.py::test_compile_on_device[0.5] ERROR                     [100%]
============================= slowest durations ==============================
1.50s call     tests/test_cuda.py::test_rates_on_device
0.25s setup    tests/test_cuda.py::test_rates_on_device
=========================== short test summary info ============================
FAILED tests/test_cuda.py::test_toy_study_on_device - AssertionError: x
========= 1 failed, 1 passed, 1 skipped, 1 error in 12.34s =========
"""


def test_parse_pytest_reads_outcomes_durations_and_the_summary():
    got = device_check.parse_pytest(CANNED)
    assert got["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "error": 1}
    assert got["tests"]["tests/test_cuda.py::test_every_variant_forward_and_backward[crate-g]"] == "SKIPPED"
    assert got["seconds"] == {"tests/test_cuda.py::test_rates_on_device": 1.75}
    assert got["summary"] == "1 failed, 1 passed, 1 skipped, 1 error in 12.34s"
    assert got["failures"] == ["FAILED tests/test_cuda.py::test_toy_study_on_device - AssertionError: x"]
    cut = device_check.parse_pytest(CANNED.splitlines()[0] + "\n")  # a run stopped at its budget
    assert cut["counts"]["passed"] == 1 and cut["summary"] is None


def test_device_check_cpu_quick_runs_every_section(tmp_path, monkeypatch):
    """--device cpu --quick with smaller knobs (one cuda test, the digits size, no compilation, 24 images):
    every section ok with numbers, and the code of each section was exercised (grouped and single training,
    the step with and without amp, every registered measure, the cuda test on the CPU stand-in)."""
    import srrlab.train
    import srrlab.train.group
    from srrlab.measures import MEASURES

    calls = {"train_group": 0, "train": 0, "amp": []}
    real_group, real_train, real_step = srrlab.train.group.train_group, srrlab.train.train, step_time.median_step

    def train_group(*a, **k):
        calls["train_group"] += 1
        return real_group(*a, **k)

    def train(*a, **k):
        calls["train"] += 1
        return real_train(*a, **k)

    def median_step(model, batch, repeats, warmup, amp=False):
        calls["amp"].append(amp)
        return real_step(model, batch, repeats, warmup, amp=amp)

    monkeypatch.setattr(srrlab.train.group, "train_group", train_group)  # group_throughput imports them per call
    monkeypatch.setattr(srrlab.train, "train", train)
    monkeypatch.setattr(step_time, "median_step", median_step)
    threads = torch.get_num_threads()
    out = tmp_path / "check.json"
    results = device_check.main(["--device", "cpu", "--quick", "--tests-k", "toy_study", "--group-sizes", "digits",
                                 "--members", "1,2", "--no-compile", "--measure-images", "24",
                                 # every measure must be timed whatever the machine's load (the quick budget of
                                 # 20 s holds on an idle 2-core CPU, not beside other work): a generous budget here
                                 "--budget-measures", "600", "--out", str(out)])
    assert torch.get_num_threads() == threads  # group_throughput's one-thread workers do not leak
    saved = json.loads(out.read_text())
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["torch"] == torch.__version__
    assert list(saved["sections"]) == list(device_check.SECTIONS) == ["tests", "group", "step", "measures"]
    for name, entry in saved["sections"].items():
        assert entry["status"] == "ok" and entry["error"] is None, (name, entry.get("error"))
        budget = 600.0 if name == "measures" else device_check.QUICK_BUDGETS[name]
        assert 0 < entry["seconds"] and entry["budget_s"] == budget
        assert entry["result"]["numbers"], name
    assert saved["total_s"] >= sum(e["seconds"] for e in saved["sections"].values()) * 0.99
    # tests: the one selected cuda test ran (and passed) on the CPU stand-in
    tests = saved["sections"]["tests"]["result"]
    assert tests["tests"] == {"tests/test_cuda.py::test_toy_study_on_device": "PASSED"}
    assert tests["counts"]["passed"] == 1 and "1 passed" in tests["summary"] and tests["returncode"] == 0
    # group: both sizes of group timed against a run alone (warm-up: one group and one run)
    rows = saved["sections"]["group"]["result"]["rows"]
    assert [(r["size"], r["members"]) for r in rows] == [("digits", 1), ("digits", 2)]
    for r in rows:
        assert r["grouped_s"] > 0 and r["alone_s"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["grouped_models_per_h"] == r["members"] * 3600 / r["grouped_s"]
    assert calls["train_group"] == 1 + 2 and calls["train"] == 1 + 1
    # step: fp32 and amp (CPU autocast here), the compiled ones left out by --no-compile
    step = saved["sections"]["step"]
    assert [(r["amp"], r["compile"]) for r in step["result"]["rows"]] == [(False, False), (True, False)]
    assert all(r["step_s_median"] > 0 and r["images_per_s"] > 0 for r in step["result"]["rows"])
    assert step["skipped"] == ["crate fp32 compiled (--no-compile)", "crate amp compiled (--no-compile)"]
    assert False in calls["amp"] and True in calls["amp"]
    # measures: every registered measure timed and valued, on the quick size
    measures = saved["sections"]["measures"]["result"]
    assert list(measures["seconds"]) == list(MEASURES) and measures["errors"] == {}
    assert set(measures["values"]) == set(MEASURES) and measures["images"] == 24 and measures["size"] == "demo"
    assert results["sections"]["measures"]["result"]["total_s"] == measures["total_s"]
