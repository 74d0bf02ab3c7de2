"""bench.py runs each of its benchmarks on a tiny config and reports a row per run, and finds a GPU's peak for MFU by
its name; no test here asserts a time."""

from pathlib import Path

import pytest

import bench


def tiny_config(tmp_path, data_dir, **settings) -> str:
    """A config file for a tiny model, so bench.py takes it like any recipe in config/."""
    settings = dict(data_dir=str(data_dir), device="cpu", n_layer=1, n_head=2, n_embd=32, block_size=16,
                    batch_size=8) | settings
    path = tmp_path / "tiny.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    return str(path)


def table_rows(report: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines()[2:]]


@pytest.mark.parametrize("name, dtype, tf32, expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", True, (989e12, "H100 SXM dense bfloat16 989 TFLOP/s")),
    ("NVIDIA H100 PCIe", "bfloat16", True, (756e12, "H100 PCIe dense bfloat16 756 TFLOP/s")),
    ("NVIDIA H100 NVL", "float16", True, (835e12, "H100 NVL dense float16 835 TFLOP/s")),
    ("NVIDIA H200", "bfloat16", True, (989e12, "H200 SXM dense bfloat16 989 TFLOP/s")),
    ("NVIDIA A100-SXM4-80GB", "float32", True, (156e12, "A100 dense TF32 156 TFLOP/s")),
    ("NVIDIA A100 80GB PCIe", "float32", False, (19.5e12, "A100 FP32 19.5 TFLOP/s")),
    ("NVIDIA L4", "bfloat16", True, (121e12, "L4 dense bfloat16 121 TFLOP/s")),
    ("NVIDIA L40S", "bfloat16", True, (362e12, "L40S dense bfloat16 362 TFLOP/s")),
    ("NVIDIA GeForce RTX 4090", "bfloat16", True, (165e12, "RTX 4090 dense bfloat16 165 TFLOP/s")),
    ("Tesla T4", "float32", True, (8.1e12, "T4 FP32 8.1 TFLOP/s")),  # no TF32 on a T4
    ("NVIDIA L40", "bfloat16", True, None),  # not in the table: no guess from a near name
    ("NVIDIA A10G", "bfloat16", True, None),
    ("NVIDIA GH200 480GB", "bfloat16", True, None),
])
def test_the_peak_for_mfu_is_looked_up_by_the_gpu_name_and_the_arithmetic(name, dtype, tf32, expected):
    assert bench.gpu_peak_flops(name, dtype, tf32) == expected


def test_step_timing_with_compare_gives_a_fast_and_an_off_row(tiny_data, tmp_path):
    config = tiny_config(tmp_path, tiny_data, batch_size=4)
    rows = table_rows(bench.main([config, "--iters=2", "--warmup=1", "--repeats=2", "--compare"]))
    assert [row[1] for row in rows] == ["fast", "off"]
    assert all(float(row[4]) > 0 for row in rows)  # ms/iter
    assert rows[1][10] == "1.00"  # the off row is the speed-up's reference
    assert float(rows[0][11]) >= 0 and float(rows[0][12]) > 0  # data load s, s per evaluation


def test_time_to_target_reports_when_the_val_loss_first_reached_it(tiny_data, tmp_path):
    config = tiny_config(tmp_path, tiny_data, max_iters=20, eval_interval=10, eval_iters=2,
                         learning_rate=3e-3, warmup_iters=5)
    (reached,) = table_rows(bench.main([config, "--target_loss=3.7", "--repeats=1"]))
    # The tiny model's val loss is about 4.07 at iter 0 and 3.66 at iter 10, where the run stops.
    assert reached[2] == reached[6] == "10" and float(reached[3]) <= 3.7
    assert 0 <= float(reached[5]) < float(reached[4])  # training is part of the time from launch
    (never,) = table_rows(bench.main([config, "--target_loss=0.5", "--repeats=1"]))
    assert never[2] == "20" and never[4] == "not reached" and never[6] == "-"
    assert float(never[7]) > 0  # a step's time, between iter 10 and 20


def test_time_to_target_over_seeds_is_their_mean(tiny_data, tmp_path, monkeypatch):
    config = tiny_config(tmp_path, tiny_data)
    calls = []

    def run(path, args, out_dir):  # what time_to_target reads from a run, made up: seed 1 is slower and worse
        calls.append(args)
        seed = int(next(a for a in args if a.startswith("--seed=")).split("=")[1])
        return {"process_s": 10.0 * seed, "target_s": 10.0 * seed, "train_s": 4.0 * seed, "target_iter": 100,
                "best_val_loss": 1.5 - seed / 100, "iter_num": 100, "step_s": 0.01, "compile_s": 2.0,
                "outside_s": 3.0, "eval_s": 1.0, "params": 1000, "dtype": "float32"}

    monkeypatch.setattr(bench, "time_to_target", run)
    (row,) = table_rows(bench.main([config, "--target_loss=1.5", "--seeds=1,3"]))
    assert [a[-1] for a in calls] == ["--seed=1", "--seed=3"] and all("--target_loss=1.5" in a for a in calls)
    assert row[1] == "1,3" and row[3] == "1.4800" and row[4] == "20.0" and row[5] == "8.0" and row[7] == "10.0"


def test_a_run_that_fails_gets_a_row_saying_why_and_the_others_still_run(tiny_data, tmp_path, capsys):
    good = tiny_config(tmp_path, tiny_data, max_iters=10, eval_interval=5, eval_iters=2, warmup_iters=2)
    broken = tmp_path / "broken.py"
    broken.write_text(Path(good).read_text() + "data_dir = 'no/such/folder'\n")
    with pytest.raises(SystemExit) as exc:
        bench.main([good, str(broken), "--target_loss=0.5", "--repeats=1"])
    out, err = capsys.readouterr()
    rows = table_rows(out[out.index("| config |"):])
    assert rows[0][0] == good and rows[0][2] == "10" and float(rows[0][3]) > 0.5
    assert rows[1][0] == str(broken) and rows[1][3].startswith("failed (exit status 2): error: ")
    assert exc.value.code == 2 and f"training {broken} failed: its row above says why" in err


def test_sampling_times_each_cache_mode(tiny_data, tmp_path):
    config = tiny_config(tmp_path, tiny_data)
    (row,) = table_rows(bench.main([config, "--sample", "--sample_tokens=40", "--repeats=1"]))
    assert row[1] == "1x32, block 16" and row[2:4] == ["1", "40"] and len(row) == 9
    assert row[6].endswith("x") and row[8].endswith("x")  # exact's speed-up over none, its cost over approximate


def test_profile_takes_a_step_apart_and_times_a_runs_start_up(tiny_data, tmp_path):
    config = tiny_config(tmp_path, tiny_data, gradient_accumulation_steps=2)
    (row,) = table_rows(bench.main([config, "--profile", "--iters=3", "--warmup=1", "--repeats=1"]))
    step, phases = float(row[1]), [float(cell.split()[0]) for cell in row[2:8]]
    assert all(ms >= 0 for ms in phases) and phases[1] > 0 and phases[2] > 0 and phases[4] > 0  # forward, back, step
    assert sum(phases) == pytest.approx(step, abs=0.1 * len(phases))  # the phases make up the step (each rounded)
    assert 0 < float(row[8].rstrip("%")) <= 100 and float(row[9]) > 0  # in PyTorch's operators; start-up s


def test_bench_mistakes_are_reported_together(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["config/cpu.py", "--iter=5", "--n_layers=2", "--compare", "--sample"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "unknown key 'iter' on the command line (did you mean 'iters'?)" in err
    assert "unknown key 'n_layers' on the command line (did you mean 'n_layer'?)" in err
    assert "--compare and --sample are different benchmarks: run them one at a time" in err


@pytest.mark.parametrize("args, message", [
    (["--seeds=1,2"], "--seeds gives the seeds of --target_loss's runs: add --target_loss, or leave --seeds out"),
    (["--target_loss=1.5", "--seeds=1,x"], "'seeds' must be comma-separated whole numbers (e.g. 1,2,3), got '1,x'"),
])
def test_seeds_mistakes_are_one_line_each(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["config/cpu.py", *args])
    assert exc.value.code == 2 and f"error: {message}" in capsys.readouterr().err


def test_bench_times_the_step_train_py_takes():
    """No copy of the training step: bench.py builds and steps through train.py's own functions."""
    import train
    assert (bench.train_step, bench.build, bench.load_config) == (train.train_step, train.build, train.load_config)
