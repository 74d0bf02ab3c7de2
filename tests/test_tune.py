import csv
import json

import pytest

import tune
from configurator import UsageError
from train import TrainConfig


@pytest.fixture
def tiny_search(tmp_path, tiny_data, monkeypatch):
    """A base config for tiny trials in tmp_path, which is also the working directory, so out/ lands there."""
    config = tmp_path / "tiny.py"
    config.write_text(f"data_dir = {str(tiny_data)!r}\ndevice = 'cpu'\ncompile = False\n"
                      "n_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 16\nbatch_size = 8\n"
                      "eval_iters = 2\nmax_iters = 40\neval_interval = 10\nlog_interval = 5\nwarmup_iters = 5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trials are tiny: one thread each, on a shared machine
    return config


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_search_ranks_trials_and_skips_finished_ones_when_run_again(tiny_search, tmp_path, capsys):
    argv = [str(tiny_search), "learning_rate=1e-3,4e-3", "n_layer=1,2", "--max_iters=20"]
    tune.main(argv)
    search_dir = tmp_path / "out" / "tune-tiny"
    trial_dirs = sorted(p for p in search_dir.iterdir() if p.is_dir())
    assert [p.name for p in trial_dirs] == ["learning_rate=0.001,n_layer=1", "learning_rate=0.001,n_layer=2",
                                            "learning_rate=0.004,n_layer=1", "learning_rate=0.004,n_layer=2"]
    config = json.loads((search_dir / "learning_rate=0.004,n_layer=2" / "config.json").read_text())
    assert (config["learning_rate"], config["n_layer"], config["max_iters"]) == (0.004, 2, 20)

    rows = read_csv(search_dir / "leaderboard.csv")
    assert list(rows[0])[:4] == ["rank", "trial", "learning_rate", "n_layer"]
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in trial_dirs}
    expected_order = sorted(summaries, key=lambda name: summaries[name]["best_val_loss"])
    assert [row["trial"] for row in rows] == expected_order
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    assert {row["status"] for row in rows} == {"finished"}
    best = summaries[expected_order[0]]
    assert float(rows[0]["best_val_loss"]) == pytest.approx(best["best_val_loss"])
    assert int(rows[0]["params"]) == best["params"]
    markdown = (search_dir / "leaderboard.md").read_text()
    assert markdown.index(expected_order[0]) < markdown.index(expected_order[-1])
    assert (search_dir / "val_loss.png").stat().st_size > 0
    assert expected_order[0] in capsys.readouterr().out

    mtimes = {p.name: (p / "summary.json").stat().st_mtime_ns for p in trial_dirs}
    tune.main(argv)
    out = capsys.readouterr().out
    assert "skipped 4 finished trials" in out
    assert {p.name: (p / "summary.json").stat().st_mtime_ns for p in trial_dirs} == mtimes
    assert [row["trial"] for row in read_csv(search_dir / "leaderboard.csv")] == expected_order


def test_a_failing_trial_is_recorded_and_the_others_still_run(tiny_search, tmp_path, capsys):
    # n_embd is 32: 3 heads do not divide it, so train.py refuses that trial.
    rows = tune.main([str(tiny_search), "n_head=3,2", "--max_iters=10", "--name=heads"])
    assert [(row["trial"], row["status"]) for row in rows] == [("n_head=2", "finished"), ("n_head=3", "failed")]
    assert rows[0]["rank"] == 1 and rows[1]["rank"] is None
    assert "'n_embd' (32) must be divisible by 'n_head' (3)" in rows[1]["error"]
    assert "failed: 'n_embd' (32) must be divisible" in capsys.readouterr().out
    csv_rows = read_csv(tmp_path / "out" / "tune-heads" / "leaderboard.csv")
    assert csv_rows[-1]["status"] == "failed" and "divisible by 'n_head'" in csv_rows[-1]["error"]
    assert (tmp_path / "out" / "tune-heads" / "n_head=2" / "summary.json").exists()


def test_finished_trials_are_recognised_by_their_config(tmp_path):
    cfg = TrainConfig(device="cpu", max_iters=20)
    expected = tune.comparable_config(cfg)
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    written = {**vars(cfg), "out_dir": "/elsewhere", "dtype": "float32", "compile": False, "lr_decay_iters": 20}
    (trial_dir / "config.json").write_text(json.dumps(written))
    assert tune.finished_summary(trial_dir, expected) is None  # no summary.json: interrupted or never finished
    (trial_dir / "summary.json").write_text(json.dumps({"best_val_loss": 2.5}))
    assert tune.finished_summary(trial_dir, expected) == {"best_val_loss": 2.5}
    assert tune.finished_summary(trial_dir, tune.comparable_config(TrainConfig(device="cpu", max_iters=30))) is None


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """['lr=1e-3,2e-3', 'n_layer=2,3'] -> {'lr': ['1e-3', '2e-3'], 'n_layer': ['2', '3']}; values stay text.

    Raises UsageError naming every malformed spec. Keys are read as on the command line (dashes become underscores).
    """
    grid, problems = tune.read_grid_specs(specs)
    if problems:
        raise UsageError(problems)
    return grid


def test_parse_grid_reads_specs_and_refuses_malformed_ones():
    assert parse_grid(["learning_rate=2e-3,4e-3", "n-layer=2,3,2"]) == {
        "learning_rate": ["2e-3", "4e-3"], "n_layer": ["2", "3"]}
    with pytest.raises(UsageError) as exc:
        parse_grid(["n_layer", "dropout=", "lr=1,,2"])
    assert exc.value.problems == [
        "grid spec 'n_layer' is not key=v1,v2: write it like n_layer=2,3",
        "grid spec 'dropout=' lists no values: write it like dropout=v1,v2",
        "grid spec 'lr=1,,2' has an empty value: separate values by single commas, no spaces",
    ]
    assert tune.convert_grid({"learning_rate": ["2e-3", "0.002", "4e-3"], "bias": ["true"]}) == {
        "learning_rate": [0.002, 0.004], "bias": [True]}


def test_random_trials_are_distinct_reproducible_and_capped_at_the_grid():
    grid = {"a": [1, 2, 3], "b": [10, 20], "c": ["x", "y"]}
    everything = tune.trial_settings(grid)
    assert len(everything) == 12 and everything[0] == {"a": 1, "b": 10, "c": "x"}
    picked = tune.trial_settings(grid, trials=5, seed=3)
    assert len(picked) == 5 and len({tuple(t.values()) for t in picked}) == 5
    assert all(t in everything for t in picked)
    assert tune.trial_settings(grid, trials=5, seed=3) == picked
    assert tune.trial_settings(grid, trials=100, seed=3) == everything
    huge = {f"k{i}": list(range(10)) for i in range(12)}  # 10**12 combinations: never listed, only sampled
    assert len(tune.trial_settings(huge, trials=3, seed=0)) == 3


def test_trial_names_are_stable_and_filesystem_safe():
    assert tune.trial_name({"learning_rate": 0.002, "n_layer": 2, "bias": True}) == \
        "learning_rate=0.002,n_layer=2,bias=true"
    slash, underscore = tune.trial_name({"data_dir": "data/a"}), tune.trial_name({"data_dir": "data_a"})
    assert "/" not in slash and slash != underscore and slash == tune.trial_name({"data_dir": "data/a"})


def test_bad_keys_are_refused_before_anything_runs(tiny_search, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        tune.main([str(tiny_search), "n_layers=1,2", "dropout=x", "--max_iterz=5", "--trails=2", "--out_dir=out/x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'n_layers' in the grid (did you mean 'n_layer'?)" in err
    assert "'dropout' in the grid must be float, got 'x'" in err
    assert "unknown key 'max_iterz' on the command line (did you mean 'max_iters'?)" in err
    assert "unknown key 'trails' on the command line (did you mean 'trials'?)" in err
    assert "'out_dir' cannot be set" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_fixed_settings_reach_each_trial_as_typed(tmp_path):
    command = tune.train_command(tmp_path / "base.py", tmp_path / "trial", {"bias": None, "max_iters": "5e2"},
                                 {"learning_rate": 0.002})
    assert command[-3:] == ["--bias", "--max_iters=5e2", "--learning_rate=0.002"]  # a bare --bias stays a bare flag


def test_a_search_over_seeds_alone_gives_their_mean():
    rows = [{"rank": 1, "best_val_loss": 1.40}, {"rank": 2, "best_val_loss": 1.44},
            {"rank": None, "best_val_loss": None}]
    line = tune.seeds_line(rows, ["seed"])  # the unfinished trial does not count
    assert line == "\nmean best val loss over 2 seeds: 1.4200 (from 1.4000 to 1.4400)\n"
    assert tune.seeds_line(rows, ["seed", "n_layer"]) == ""  # another key varies too: no one recipe's spread
    assert tune.seeds_line(rows[:1], ["seed"]) == ""  # one seed is no spread
