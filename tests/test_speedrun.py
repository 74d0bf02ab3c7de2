"""A race to a val loss: target_loss ends the run at the first evaluation at or below it, target_eval_interval
evaluates often once the training loss is near it (train.eval_due), those extra evaluations save no checkpoint
unless the run ends there, and eval_s keeps the time they take apart from the training's."""

from dataclasses import replace

import pytest
import torch

import train
from conftest import tiny_train_args
from runlog import read_metrics


def test_eval_due_evaluates_every_eval_interval_and_often_near_the_target():
    cfg = replace(train.TrainConfig(), eval_interval=100, target_loss=1.5, target_eval_interval=10)
    far, near = 1.5 + train.NEAR_TARGET + 0.01, 1.5 + train.NEAR_TARGET - 0.01
    assert train.eval_due(0, far, cfg) and not train.eval_due(0, far, replace(cfg, eval_at_start=False))
    assert train.eval_due(200, far, cfg) and not train.eval_due(30, far, cfg)
    assert train.eval_due(30, near, cfg) and not train.eval_due(35, near, cfg)
    assert not train.eval_due(30, near, replace(cfg, target_eval_interval=0))  # off: eval_interval only
    assert not train.eval_due(30, near, replace(cfg, target_loss=0.0))


def test_a_run_with_target_loss_stops_at_the_first_evaluation_that_reaches_it(tiny_data, tmp_path, monkeypatch):
    settings = dict(dropout=0.0, max_iters=40, log_interval=2)
    train.main(tiny_train_args(tiny_data, tmp_path / "whole", eval_interval=2, **settings))
    curve = read_metrics(tmp_path / "whole")
    # A target the run crosses halfway: the first even step whose val loss is at or below it is where it must stop.
    # metrics.jsonl rounds to 6 decimals, so the target sits a hair above the rounded loss, not perhaps below the true.
    halfway = curve[len(curve) // 2]["val_loss"]
    target = halfway + 1e-6
    crossing = next(m["iter_num"] for m in curve if m["val_loss"] <= target)

    saved = []
    real_save = train.save
    monkeypatch.setattr(train, "save", lambda path, about, state, *a, **k: (saved.append((path.name, state.iter_num)),
                                                                            real_save(path, about, state, *a, **k)))
    out = tmp_path / "race"
    summary = train.main(tiny_train_args(tiny_data, out, eval_interval=100, target_loss=target,
                                         target_eval_interval=2, **settings))
    assert summary["status"] == "target_reached" and summary["iter_num"] == crossing
    assert summary["best_val_loss"] == pytest.approx(halfway, abs=1e-6)
    race = read_metrics(out)
    assert race[-1]["iter_num"] == crossing and len(race) < len(curve)  # no evaluations before it was near
    for mine, whole in zip(race, [m for m in curve if m["iter_num"] in {r["iter_num"] for r in race}]):
        assert mine["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-6)  # evaluating changes no training
    # The evaluations near the target saved nothing; the one that reached it saved both checkpoints.
    assert sorted(saved) == [("best.pt", crossing), ("ckpt.pt", crossing)]
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == crossing
    assert 0 < summary["eval_s"] < summary["elapsed_s"]
    assert all(0 <= a["eval_s"] <= b["eval_s"] <= b["elapsed_s"] for a, b in zip(race, race[1:]))


def test_target_loss_and_its_interval_must_not_be_negative(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, tmp_path, target_loss=-1, target_eval_interval=-5))
    err = capsys.readouterr().err
    assert "'target_loss' must be >= 0, got -1.0" in err and "'target_eval_interval' must be >= 0, got -5" in err
