"""Experiment trackers a run can also log to, besides its own metrics.jsonl: Weights & Biases (nanoGPT's wandb_log,
wandb_project and wandb_run_name keys) and TensorBoard (tensorboard_log). Each receives the resolved config once and
every evaluation's line of metrics.jsonl, at its iter_num.

Their packages are optional: each is imported only when its key switches it on, and a missing one is reported with
the other settings' problems, before any work starts, naming the pip command. Both write inside out_dir (wandb/,
tensorboard/), so a run's tracker files move with it when a new run keeps it aside.
"""

import importlib.util
import json
from contextlib import contextmanager
from pathlib import Path

TRACKER_DIRS = ("wandb", "tensorboard")  # what the trackers write inside out_dir


PACKAGES = {"wandb_log": ("wandb", "pip install wandb"), "tensorboard_log": ("tensorboard", "pip install tensorboard")}


def missing_packages(**switched: bool) -> list[str]:
    """One line for each tracker switched on (by its key) whose package is not installed."""
    return [f"'{key}' is on, but the {package} package is not installed: {command} (or leave {key} off)"
            for key, (package, command) in PACKAGES.items()
            if switched.get(key) and importlib.util.find_spec(package) is None]


class WandbTracker:
    def __init__(self, config: dict, out_dir: Path):
        import wandb  # missing_packages() made sure it is there
        (out_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(project=config["wandb_project"], name=config["wandb_run_name"] or out_dir.name,
                              config=config, dir=str(out_dir))

    def log(self, record: dict) -> None:
        self.run.log({key: value for key, value in record.items() if key != "iter_num"}, step=record["iter_num"])

    def close(self) -> None:
        self.run.finish()


class TensorBoardTracker:
    def __init__(self, config: dict, out_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package: missing_packages()
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1)}\n```")

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, str):  # the sample: text over training, under TensorBoard's Text tab
                self.writer.add_text(key, value, global_step=record["iter_num"])
            elif key != "iter_num":
                self.writer.add_scalar(key, value, global_step=record["iter_num"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@contextmanager
def trackers(config: dict, out_dir: Path, on: bool = True):
    """The trackers config switches on (none where on is False: processes other than rank 0), as a list whose
    members each have log(record); they are closed when the with-block ends, however it ends."""
    opened = []
    try:
        if on and config.get("wandb_log"):
            opened.append(WandbTracker(config, out_dir))
        if on and config.get("tensorboard_log"):
            opened.append(TensorBoardTracker(config, out_dir))
        yield opened
    finally:
        for tracker in opened:
            tracker.close()
