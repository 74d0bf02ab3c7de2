import json

import pytest
from matplotlib.colors import to_rgba

import plot
import runlog
from configurator import UsageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (iter, train_loss, val_loss, elapsed_s, tokens); run "a" overfits, so its best val loss is not its last one.
CURVES = {
    "a": [(0, 4.20, 4.21, 0.0, 0), (100, 1.80, 1.90, 5.0, 12800), (200, 1.40, 1.55, 10.0, 25600),
          (300, 1.20, 1.60, 15.0, 38400)],
    "b": [(0, 4.18, 4.19, 0.0, 0), (150, 1.95, 2.00, 4.0, 9600), (300, 1.70, 1.75, 8.0, 19200)],
}


def write_run(run_dir, curve):
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"iter_num": i, "train_loss": t, "val_loss": v, "lr": 1e-3, "elapsed_s": s, "tokens_seen": n})
             for i, t, v, s, n in curve]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.fixture
def runs(tmp_path):
    return [write_run(tmp_path / name, curve) for name, curve in CURVES.items()]


def val_lines(ax):
    return [line for line in ax.lines if line.get_linestyle() == "-" and not line.get_label().startswith("_")]


def dashed_lines(ax):
    return [line for line in ax.lines if line.get_linestyle() == "--"]


def marker_lines(ax):
    return [line for line in ax.lines if line.get_linestyle() == "None" and line.get_marker() not in (None, "None")]


def test_one_val_line_per_run_with_its_train_line_and_best_point(runs, tmp_path):
    output = tmp_path / "figs" / "nested" / "loss.png"
    fig = plot.plot_runs(runs, output)
    ax = fig.axes[0]

    vals = val_lines(ax)
    assert [line.get_label() for line in vals] == ["a (best 1.550)", "b (best 1.750)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (best 1.550)", "b (best 1.750)"]
    dashed, markers = dashed_lines(ax), marker_lines(ax)
    assert len(dashed) == len(markers) == 2
    for val, train, best, curve in zip(vals, dashed, markers, CURVES.values()):
        assert list(val.get_xdata()) == [c[0] for c in curve]
        assert list(val.get_ydata()) == [c[2] for c in curve]
        assert list(train.get_ydata()) == [c[1] for c in curve]
        assert to_rgba(train.get_color()) == to_rgba(val.get_color()) == to_rgba(best.get_color())
    assert to_rgba(vals[0].get_color()) != to_rgba(vals[1].get_color())
    assert (list(markers[0].get_xdata()), list(markers[0].get_ydata())) == ([200], [1.55])  # not the last eval
    assert (list(markers[1].get_xdata()), list(markers[1].get_ydata())) == ([300], [1.75])

    # 4.2 down to 1.2 is more than a factor of 2 apart: log scale.
    assert ax.get_yscale() == "log"
    assert output.read_bytes().startswith(PNG_SIGNATURE)


def test_a_narrow_loss_range_stays_linear(tmp_path):
    run = write_run(tmp_path / "late", [(1000, 1.80, 1.90, 50.0, 1), (2000, 1.50, 1.60, 100.0, 2)])
    fig = plot.plot_runs([run], tmp_path / "late.png")
    assert fig.axes[0].get_yscale() == "linear"


@pytest.mark.parametrize("x, column", [("tokens_seen", 4), ("elapsed_s", 3)])
def test_x_axis_uses_the_chosen_column(runs, tmp_path, x, column):
    fig = plot.plot_runs(runs, tmp_path / "loss.png", x=x)
    ax = fig.axes[0]
    assert list(val_lines(ax)[0].get_xdata()) == [c[column] for c in CURVES["a"]]
    assert list(marker_lines(ax)[0].get_xdata()) == [CURVES["a"][2][column]]
    assert ax.get_xlabel() == plot.X_AXES[x]


def test_command_line_prints_the_table_and_writes_the_png(runs, tmp_path, capsys):
    output = tmp_path / "out.png"
    fig = plot.main([str(runs[0]), str(runs[1]), f"--output={output}", "--x=tokens_seen"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "best", "val", "loss", "bits/char", "at", "iter", "final", "val", "loss",
                                "evals"]
    assert lines[1].split() == ["a", "1.5500", "-", "200", "1.6000", "4"]  # these runs logged no bits per character
    assert lines[2].split() == ["b", "1.7500", "-", "300", "1.7500", "3"]
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    assert list(val_lines(fig.axes[0])[1].get_xdata()) == [0, 9600, 19200]


def test_default_finds_runs_at_any_depth_under_out(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "out" / "cpu", CURVES["a"])
    write_run(tmp_path / "out" / "tune" / "sweep" / "c2", CURVES["b"])
    write_run(tmp_path / "out" / "tune" / "sweep" / "c10", CURVES["b"])
    (tmp_path / "out" / "starting").mkdir()
    (tmp_path / "out" / "starting" / "metrics.jsonl").write_text("")  # no evaluation yet: nothing to draw
    (tmp_path / "out" / "compare").mkdir()  # no metrics.jsonl: not a run
    monkeypatch.chdir(tmp_path)
    fig = plot.main([])
    assert [line.get_label().split(" (")[0] for line in val_lines(fig.axes[0])] == \
        ["cpu", "tune/sweep/c2", "tune/sweep/c10"]
    assert (tmp_path / "out" / "val_loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "tune/sweep/c10" in capsys.readouterr().out


def test_runs_outside_out_are_named_by_their_folder(tmp_path):
    first = write_run(tmp_path / "x" / "run", CURVES["a"])
    other = write_run(tmp_path / "y" / "run", CURVES["b"])
    alone = write_run(tmp_path / "z" / "solo", CURVES["b"])
    assert plot.run_names([alone, tmp_path / "out" / "tune" / "c1"], out_root=tmp_path / "out") == ["solo", "tune/c1"]
    # Two runs that would share a name keep their paths apart.
    assert plot.run_names([first, other], out_root=tmp_path / "out") == [str(first), str(other)]


def error_of(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        plot.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_run_folder(tmp_path, capsys):
    err = error_of(capsys, [str(tmp_path / "nope"), f"--output={tmp_path / 'o.png'}"])
    assert f"run folder '{tmp_path / 'nope'}' not found" in err


def test_folder_without_metrics(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = error_of(capsys, [str(tmp_path / "empty"), f"--output={tmp_path / 'o.png'}"])
    assert "has no metrics.jsonl" in err


def test_no_runs_under_out(tmp_path, monkeypatch, capsys):
    (tmp_path / "out" / "cpu").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert "no runs with a metrics.jsonl under out/" in error_of(capsys, [])


def test_bad_x(runs, capsys):
    assert "'x' on the command line must be 'iter_num' or 'train_s' or 'elapsed_s' or 'tokens_seen', got 'epochs'" in \
        error_of(capsys, [str(runs[0]), "--x=epochs"])
    with pytest.raises(UsageError, match="x must be one of iter_num, train_s, elapsed_s, tokens_seen"):
        plot.plot_runs(runs, "unused.png", x="epochs")


def test_option_without_a_value(runs, capsys):
    assert "'output' on the command line needs a value: write --output=VALUE" in \
        error_of(capsys, [str(runs[0]), "--output"])


@pytest.mark.parametrize("content, message", [
    ("", "is empty: the run has not reached its first evaluation yet"),
    ('{"iter_num": 0, "train_loss": 4.2, "val_loss": 4.2}\n{"iter_num": 10, "train_loss": 3\n',
     "line 2 is not valid JSON"),
    ('{"iter_num": 0, "train_loss": 4.2, "val_loss": 4.2}\n\n[1, 2]\n', "line 3 is not a JSON object"),
    ('{"iter_num": 0, "train_loss": 4.2}\n', "line 1 has no 'val_loss'"),
    ('{"iter_num": 0, "train_loss": 4.2, "val_loss": null}\n', "line 1 has a non-number (None) for 'val_loss'"),
])
def test_read_metrics_names_the_file_and_line(tmp_path, content, message):
    (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(UsageError) as exc:
        runlog.read_metrics(tmp_path)
    assert str(exc.value).startswith(str(tmp_path / "metrics.jsonl")) and message in str(exc.value)


def test_a_missing_x_column_is_named(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iter_num": 0, "train_loss": 4.2, "val_loss": 4.2}\n')
    with pytest.raises(UsageError, match="line 1 has no 'tokens_seen'"):
        plot.plot_runs([run], tmp_path / "o.png", x="tokens_seen")
