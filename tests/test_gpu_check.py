""".ci/gpu, the GPU check, as far as a machine without a GPU can try it: it says in one line that it needs one, and
its runner records every step (passed, failed, timed out, out of time) and goes on to the next."""

import importlib.util
import subprocess

import pytest
import torch

from conftest import REPO


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / ".ci" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_cuda_it_says_so_in_one_line_and_fails(tmp_path):
    proc = subprocess.run(["bash", str(REPO / ".ci" / "gpu"), str(tmp_path / "report")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: no CUDA GPU on this machine: .ci/gpu checks the GPU path and "
                                                "needs one"]
    assert not (tmp_path / "report").exists()


def test_every_step_is_recorded_and_a_failure_does_not_stop_the_next(tmp_path):
    gpu_check = load_gpu_check()
    steps = [
        ("figures", "a step that prints a table", "echo '| a | b |'; echo '| 1 | 2 |'; echo done", 5),
        ("broken", "a step that fails", "python -c 'raise SystemExit(3)'", 5),
        ("slow", "a step past its limit", "sleep 10", 1),
        ("after", "a step after those", "echo still here", 5),
        ("late", "a step the budget cannot fit: it would need 30 s at least", "echo never", 600),
    ]
    results = gpu_check.run_steps(steps, tmp_path, ["- device: none (a test)"], budget_s=20)
    assert [r["status"] for r in results] == [
        "passed", "FAILED (exit status 3)", "FAILED (timed out after 1 s)", "passed",
        results[-1]["status"]]
    assert results[-1]["status"].startswith("not run:") and results[-1]["seconds"] == "-"
    report = (tmp_path / "gpu-report.md").read_text()
    assert "- device: none (a test)" in report and "| 1 | 2 |" in report and "still here" in report
    assert "## broken: FAILED (exit status 3)" in report
    assert (tmp_path / "logs" / "figures.log").read_text() == "| a | b |\n| 1 | 2 |\ndone\n"


def test_the_check_runs_the_gpu_tests_and_the_measurements_the_issue_names():
    commands = {name: command for name, _, command, _ in load_gpu_check().STEPS}
    assert commands["tests"] == "python -m pytest -q tests/test_gpu.py"
    assert "bench.py config/baseline.py --compare" in commands["compare"]
    assert "--target_loss=1.4697" in commands["target"] and "--compile_mode=reduce-overhead" in commands["graphs"]
    assert "--sample" in commands["sample"] and "config/record.py" in commands["record"]
    assert "--target_loss=1.4697" in commands["speedrun"] and "{winner}" in commands["seeds"]
    assert "tune.py config/record.py seed=1,2,3" in commands["seeds"]


def test_the_speedrun_candidates_exist_and_the_winner_is_the_soonest_from_launch(tmp_path):
    gpu_check = load_gpu_check()
    assert all((REPO / path).is_file() for path in gpu_check.SPEEDRUN_CANDIDATES)
    assert gpu_check.speedrun_winner(tmp_path) == "config/speedrun.py"  # no speedrun log yet: the first candidate
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "speedrun.log").write_text(
        "python bench.py ...\n"
        "| config | seeds | iters | best val loss (median) | s from launch to val loss <= 1.4697 |\n"
        "| --- | --- | --- | --- | --- |\n| config/speedrun.py | - | 1300 | 1.4690 | 41.5 |\n"
        "| config/speedrun_adamw.py | - | 1600 | 1.4801 | not reached |\n"
        "| config/speedrun_bigbatch.py | - | 1100 | 1.4695 | 38.2 |\n")
    assert gpu_check.speedrun_winner(tmp_path) == "config/speedrun_bigbatch.py"
