"""bench.py runs each of its benchmarks on a tiny config and reports a row per run, and finds a GPU's peak for MFU by
its name; no test here asserts a time."""

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
    reached = table_rows(bench.main([config, "--target_loss=3.7", "--repeats=1"]))
    assert reached[0][4] == "10"  # the tiny model's val loss is about 4.07 at iter 0 and 3.66 at iter 10
    never = table_rows(bench.main([config, "--target_loss=0.5", "--repeats=1"]))
    assert never[0][3] == "not reached" and never[0][4] == "-"


def test_sampling_times_each_cache_mode(tiny_data, tmp_path):
    config = tiny_config(tmp_path, tiny_data)
    (row,) = table_rows(bench.main([config, "--sample", "--sample_tokens=40", "--repeats=1"]))
    assert row[1] == "1x32, block 16" and row[2:4] == ["1", "40"] and len(row) == 9
    assert row[6].endswith("x") and row[8].endswith("x")  # exact's speed-up over none, its cost over approximate


def test_bench_mistakes_are_reported_together(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["config/cpu.py", "--iter=5", "--n_layers=2", "--compare", "--sample"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "unknown key 'iter' on the command line (did you mean 'iters'?)" in err
    assert "unknown key 'n_layers' on the command line (did you mean 'n_layer'?)" in err


def test_bench_times_the_step_train_py_takes():
    """No copy of the training step: bench.py builds and steps through train.py's own functions."""
    import train
    assert (bench.train_step, bench.build, bench.load_config) == (train.train_step, train.build, train.load_config)
