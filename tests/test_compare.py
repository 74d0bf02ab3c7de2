import json
import re
import shutil

import pytest

import compare
import explain
import sample
import tables
import train
from checkpoint import load_model
from conftest import tiny_train_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_data):
    """Two real tiny runs that differ only in n_embd (and out_dir, which is bookkeeping)."""
    root = tmp_path_factory.mktemp("compare_runs")
    train.main(tiny_train_args(tiny_data, root / "a"))
    train.main(tiny_train_args(tiny_data, root / "b", n_embd=48))
    return root / "a", root / "b"


def table_rows(report: str, first_column: str = "run") -> dict[str, dict[str, str]]:
    """The report's table whose header starts with first_column, as {first cell: {column: cell}}."""
    table = report[report.index(f"| {first_column} |"):].split("\n\n")[0]
    lines = [line for line in table.splitlines() if not line.startswith("| ---")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split(" | ")))) for line in lines[1:]]
    return {row[first_column]: row for row in rows}


def samples_by_run(report: str) -> dict[str, str]:
    """{run name: sample text} from the '### name' sections and their fenced blocks."""
    return dict(re.findall(r"^### (.+?)\n.*?^```text\n(.*?)\n```$", report, flags=re.M | re.S))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_report_holds_every_run_its_changes_and_samples(two_runs, tmp_path, capsys):
    a, b = two_runs
    output = tmp_path / "report"
    report_path = compare.main([str(a), str(b), f"--output={output}", "--start=First", "--max_new_tokens=40",
                                "--seed=3"])
    assert report_path == output / "report.md"
    assert str(report_path) in capsys.readouterr().out
    report = report_path.read_text()

    rows = table_rows(report)
    assert list(rows) == ["a", "b"]
    assert rows["a"]["differs from the first run"] == "(reference)"
    assert rows["b"]["differs from the first run"] == "n_embd=48"  # not out_dir, not the settings they share
    for run_dir in (a, b):
        row = rows[run_dir.name]
        best = min(m["val_loss"] for m in read_metrics(run_dir))
        assert float(row["best val loss"]) == pytest.approx(best, abs=1e-4)
        assert int(row["params"].replace(",", "")) == json.loads((run_dir / "run.json").read_text())["params"]
    assert int(rows["b"]["params"].replace(",", "")) > int(rows["a"]["params"].replace(",", ""))

    assert "![" in report and "(val_loss.png)" in report
    assert (output / "val_loss.png").read_bytes().startswith(PNG_SIGNATURE)

    samples = samples_by_run(report)
    assert list(samples) == ["a", "b"]
    assert all(text.startswith("First") and len(text) == len("First") + 40 for text in samples.values())
    assert samples["a"] != samples["b"]
    # The same prompt and seed as sample.py would use, on the CPU.
    model, vocab, _ = load_model(a, "cpu")
    assert samples["a"] == sample.generate_texts(model, vocab, "First", 1, 40, 0.8, 200, 3, "cpu")[0]
    for run_dir in (a, b):  # then the text it wrote at its evaluations, in order
        section = report.split(f"### {run_dir.name}\n")[1].split("\n### ")[0]
        written = re.findall(r"^At iter (\d+):\n\n```text\n(.*?)\n```$", section, flags=re.M | re.S)
        assert written == [(str(m["iter_num"]), m["sample"]) for m in read_metrics(run_dir) if "sample" in m] != []


def test_the_report_shows_where_the_loss_goes_by_context_and_by_layer(two_runs, tmp_path):
    a, b = two_runs
    report = compare.main([str(a), str(b), f"--output={tmp_path / 'report'}", "--max_new_tokens=5"]).read_text()
    assert (tmp_path / "report" / "context.png").read_bytes().startswith(PNG_SIGNATURE) and "(context.png)" in report
    by_position = table_rows(report, "characters of context")
    assert list(by_position) == ["1", "2-3", "4-7", "8-15", "16"]  # the tiny runs' block_size is 16
    by_layer = table_rows(report, "residual stream")
    assert list(by_layer) == ["embeddings", "after block 0"]
    for run_dir in (a, b):
        model, vocab, _ = load_model(run_dir, "cpu")
        measures = explain.run_val_measures(model, vocab, json.loads((run_dir / "config.json").read_text()))
        context = measures["context_loss"]
        assert [float(by_position[p][run_dir.name]) for p in by_position] == pytest.approx(
            [context[0], sum(context[1:3]) / 2, sum(context[3:7]) / 4, sum(context[7:15]) / 8, context[15]], abs=1e-4)
        best = min(m["val_loss"] for m in read_metrics(run_dir))  # the last layer is the model: its best.pt
        assert float(by_layer["after block 0"][run_dir.name].split()[0]) == pytest.approx(best, abs=1e-4)
    quick = compare.main([str(a), str(b), f"--output={tmp_path / 'quick'}", "--max_new_tokens=5",
                          "--inside=false"]).read_text()
    assert "characters of context" not in quick and not (tmp_path / "quick" / "context.png").exists()


def test_summary_json_fills_the_row_and_its_absence_leaves_dashes(two_runs, tmp_path):
    a, b = two_runs
    finished, interrupted = tmp_path / "finished", tmp_path / "interrupted"
    shutil.copytree(a, finished)
    shutil.copytree(b, interrupted)
    (interrupted / "summary.json").unlink(missing_ok=True)
    metrics = read_metrics(finished)
    best = min(metrics, key=lambda m: m["val_loss"])
    (finished / "summary.json").write_text(json.dumps({
        "run": "finished", "status": "early_stopped", "params": 12345, "iter_num": 40, "max_iters": 40,
        "best_val_loss": best["val_loss"], "best_iter": best["iter_num"], "best_val_ppl": 7.25,
        "gap_at_best": 0.0625, "elapsed_s": 123.4, "tokens_per_s": 5000.0,
    }))
    report = compare.main([str(finished), str(interrupted), f"--output={tmp_path / 'report'}",
                           "--max_new_tokens=5"]).read_text()
    rows = table_rows(report)
    assert rows["finished"]["params"] == "12,345"
    assert rows["finished"]["at iter"] == str(best["iter_num"])
    assert rows["finished"]["val ppl"] == "7.25"
    assert rows["finished"]["train/val gap"] == "+0.0625"
    assert rows["finished"]["training time"] == "2m 03.4s"
    assert rows["finished"]["tokens/s"] == "5,000"
    assert rows["finished"]["status"] == "early_stopped"

    fallback = rows["interrupted"]
    interrupted_metrics = read_metrics(interrupted)
    interrupted_best = min(interrupted_metrics, key=lambda m: m["val_loss"])
    assert float(fallback["best val loss"]) == pytest.approx(interrupted_best["val_loss"], abs=1e-4)
    assert fallback["at iter"] == str(interrupted_best["iter_num"])
    assert float(fallback["train/val gap"]) == pytest.approx(
        interrupted_best["val_loss"] - interrupted_best["train_loss"], abs=1e-4)
    assert fallback["training time"] == fallback["tokens/s"] == "-"
    assert "no summary.json" in fallback["status"]


def test_config_differences_ignore_bookkeeping_and_name_missing_keys():
    reference = {"out_dir": "out/a", "device": "cpu", "n_layer": 2, "learning_rate": 0.001, "bias": False,
                 "dropout": 0.0}
    other = {"out_dir": "out/b", "device": "cuda", "n_layer": 4, "learning_rate": 0.002, "bias": True,
             "dropout": 0.0, "early_stop_patience": 3}
    assert compare.config_differences(other, reference) == [
        "n_layer=4", "learning_rate=0.002", "bias=true", "early_stop_patience=3"]
    assert compare.config_differences(reference, other) == ["n_layer=2", "learning_rate=0.001", "bias=false",
                                                            "early_stop_patience=(not set)"]
    assert compare.config_differences(reference, reference) == []


def test_a_fence_longer_than_any_backticks_in_the_sample():
    assert tables.fenced("plain") == "```text\nplain\n```"
    assert tables.fenced("a ```` b").startswith("`````text\n")


def error_of(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        compare.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_fewer_than_two_runs(two_runs, capsys):
    assert "at least two run folders, got 1" in error_of(capsys, [str(two_runs[0])])


def test_missing_run_folder(two_runs, tmp_path, capsys):
    err = error_of(capsys, [str(two_runs[0]), str(tmp_path / "gone"), f"--output={tmp_path / 'r'}"])
    assert f"run folder '{tmp_path / 'gone'}' not found" in err
    assert not (tmp_path / "r").exists()


def test_run_without_a_checkpoint(two_runs, tmp_path, capsys):
    stripped = tmp_path / "stripped"
    shutil.copytree(two_runs[1], stripped)
    for name in ("best.pt", "ckpt.pt"):
        (stripped / name).unlink()
    err = error_of(capsys, [str(two_runs[0]), str(stripped), f"--output={tmp_path / 'r'}"])
    assert "has no best.pt or ckpt.pt" in err and str(stripped) in err


def test_prompt_characters_a_run_lacks_name_the_run(two_runs, tmp_path, capsys):
    err = error_of(capsys, [str(two_runs[0]), str(two_runs[1]), "--start=Hi €", f"--output={tmp_path / 'r'}"])
    assert err.startswith("error: run a: ") and "'€'" in err
    assert not (tmp_path / "r").exists()


def test_every_run_takes_the_prompt_before_any_sample_is_generated(two_runs, tmp_path, capsys, monkeypatch):
    """A prompt character only the last run lacks stops the script before the first run's sample costs time."""
    def load_without_h(run_dir, device):
        model, vocab, info = load_model(run_dir, device)
        return (model, [c if c != "H" else "\x00" for c in vocab], info) if run_dir == two_runs[1] \
            else (model, vocab, info)

    generated = []
    monkeypatch.setattr(compare, "load_model", load_without_h)
    monkeypatch.setattr(compare, "generate_texts", lambda *a, **k: generated.append(a) or ["x"])
    err = error_of(capsys, [str(two_runs[0]), str(two_runs[1]), "--start=Hi", f"--output={tmp_path / 'r'}"])
    assert err.startswith("error: run b: ") and "'H'" in err
    assert generated == [] and not (tmp_path / "r").exists()
