"""max_time: a run's training budget in seconds. The runs here read a fake clock that moves only when the run trains
or evaluates, so that each test knows to the step where the budget runs out: no test races the real clock."""

import json
import math
import types

import pytest

import checkpoint
import stop_points
import train
from conftest import tiny_train_args

STEP_S, EVAL_S = 1.0, 5.0  # fake seconds a training step takes, and an evaluation


def fake_clock(monkeypatch, stop_after_step: int = 0) -> list[tuple[float, float]]:
    """Makes train.py's clock advance STEP_S in each training step and EVAL_S in each evaluation, nothing otherwise;
    returns the (clock, learning rate) of every step taken. stop_after_step: a Ctrl-C after that many steps."""
    now, steps = [0.0], []
    real_step, real_estimate = train.train_step, train.estimate_loss

    def train_step(model, optimizer, *args):
        group = optimizer.param_groups[0]
        steps.append((now[0], group["lr"] / group["lr_scale"]))
        now[0] += STEP_S
        return real_step(model, optimizer, *args)

    def estimate_loss(*args, **kwargs):
        now[0] += EVAL_S
        return real_estimate(*args, **kwargs)

    if stop_after_step:
        train_step = stop_points.stopping(train_step, train.eval_batches, stop_after_step, False,
                                          stop_points.ctrl_c)[0]
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(train, "train_step", train_step)
    monkeypatch.setattr(train, "estimate_loss", estimate_loss)
    return steps


def metrics(out_dir) -> list[tuple]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["iter_num"], m["val_loss"], m["lr"]) for m in rows]


def test_the_budget_ends_the_run_at_the_step_that_spends_it_and_evaluations_do_not_count(tiny_data, tmp_path,
                                                                                        monkeypatch):
    fake_clock(monkeypatch)
    summary = train.main(tiny_train_args(tiny_data, tmp_path / "run", max_iters=1000, max_time=10.5, eval_interval=4))
    # After 10 steps 10 s are spent, under the budget; the 11th crosses it: the run ends there, then evaluates.
    assert summary["iter_num"] == 11 and summary["status"] == "finished"
    evaluations = 1 + 2 + 1  # at iter 0, at 4 and 8, and at the end
    assert summary["train_s"] == 11 * STEP_S and summary["eval_s"] == evaluations * EVAL_S
    assert summary["elapsed_s"] == summary["train_s"] + summary["eval_s"] and summary["max_time"] == 10.5
    assert [m[0] for m in metrics(tmp_path / "run")] == [0, 4, 8, 11]


def test_the_schedule_follows_the_share_of_the_budget_spent(tiny_data, tmp_path, monkeypatch):
    steps = fake_clock(monkeypatch)
    args = tiny_train_args(tiny_data, tmp_path / "run", max_iters=1000, max_time=20, warmup_iters=0,
                           learning_rate=3e-3, min_lr=3e-4, lr_schedule="cosine", eval_interval=100,
                           eval_at_start="false")
    train.main(args)
    rates = dict(steps)  # clock -> the rate of the step that began then
    assert len(rates) == 20  # 20 steps of 1 s in a 20 s budget, though max_iters allows 1,000
    assert rates[10.0] == pytest.approx((3e-3 + 3e-4) / 2)  # half the budget: the cosine's midpoint
    assert rates[5.0] == pytest.approx(3e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * (3e-3 - 3e-4))  # a quarter
    cfg = train.load_config(args)
    assert all(lr == pytest.approx(train.get_lr(1000 * clock / 20, cfg)) for clock, lr in steps)
    assert train.schedule_position(10, 5.0, cfg) == 250.0  # the budget's share, on max_iters' scale
    assert train.schedule_position(300, 5.0, cfg) == 300  # or the steps', whichever is further on
    assert train.schedule_position(7, 1e6, train.load_config([])) == 7  # no budget: the steps alone


@pytest.mark.parametrize("max_iters, max_time, steps", [(15, 100, 15), (15, 5, 5)])
def test_max_iters_and_max_time_whichever_comes_first(max_iters, max_time, steps, tiny_data, tmp_path, monkeypatch):
    fake_clock(monkeypatch)
    summary = train.main(tiny_train_args(tiny_data, tmp_path / "run", max_iters=max_iters, max_time=max_time))
    assert summary["iter_num"] == steps and summary["train_s"] == steps * STEP_S


def test_a_resumed_budgeted_run_ends_at_the_same_total_budget(tiny_data, tmp_path, monkeypatch):
    budget = dict(max_iters=1000, max_time=20, eval_interval=6)
    fake_clock(monkeypatch)
    whole = train.main(tiny_train_args(tiny_data, tmp_path / "whole", **budget))
    monkeypatch.undo()
    fake_clock(monkeypatch, stop_after_step=8)
    with pytest.raises(SystemExit):
        train.main(tiny_train_args(tiny_data, tmp_path / "run", **budget))
    stopped = checkpoint.load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert stopped["iter_num"] == 8 and stopped["elapsed_s"] - stopped["eval_s"] == 8 * STEP_S
    monkeypatch.undo()
    fake_clock(monkeypatch)  # a new process: its clock starts again
    resumed = train.main(tiny_train_args(tiny_data, tmp_path / "run", init_from="resume", **budget))
    assert resumed["iter_num"] == whole["iter_num"] == 20 and resumed["train_s"] == whole["train_s"] == 20 * STEP_S
    assert metrics(tmp_path / "run") == metrics(tmp_path / "whole")  # the same rates, so the same curve
