"""Stops at chosen points of a run, for the tests of stopping: a signal sent by the run itself at a given step or in
a given evaluation, so that no test races the clock.

Run as a script, it is train.py with the stop that these environment variables ask for (torchrun starts it as it
starts train.py):
    STOP_RANK=R STOP_AFTER_STEP=N    the process of rank R sends itself a Ctrl-C (SIGINT) after its Nth step
    STOP_IN_EVALUATION_AFTER_STEP=N  in the first evaluation after its Nth step, rank 0 sends torchrun a SIGTERM,
                                     which torchrun passes on to every process, and waits for it to arrive
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train  # noqa: E402


def stopping(real_train_step, real_eval_batches, after_step: int, in_evaluation: bool, send):
    """Replacements for train.train_step and train.eval_batches that count this process's steps and call send()
    once: after step after_step, or with in_evaluation in the first evaluation after it, once a batch is read."""
    steps, sent = [0], [False]

    def train_step(*args):
        loss = real_train_step(*args)
        steps[0] += 1
        if steps[0] == after_step and not in_evaluation:
            send()
        return loss

    def eval_batches(*args):
        for i, batch in enumerate(real_eval_batches(*args)):
            if in_evaluation and steps[0] >= after_step and i == 1 and not sent[0]:
                sent[0] = True
                send()
            yield batch

    return train_step, eval_batches


def ctrl_c():
    """A Ctrl-C to this process: its handler has run when os.kill returns."""
    os.kill(os.getpid(), signal.SIGINT)


def sigterm_through_torchrun():
    """A SIGTERM to torchrun, and back: torchrun passes it on to every process it started, this one included."""
    stop = signal.getsignal(signal.SIGTERM).__self__  # train.py's devices.StopRequest
    os.kill(os.getppid(), signal.SIGTERM)
    while not stop.requested:
        time.sleep(0.01)


def main():
    rank, environ = int(os.environ.get("RANK", 0)), os.environ
    if "STOP_AFTER_STEP" in environ and rank == int(environ["STOP_RANK"]):
        train.train_step, train.eval_batches = stopping(train.train_step, train.eval_batches,
                                                        int(environ["STOP_AFTER_STEP"]), False, ctrl_c)
    if "STOP_IN_EVALUATION_AFTER_STEP" in environ and rank == 0:
        train.train_step, train.eval_batches = stopping(train.train_step, train.eval_batches,
                                                        int(environ["STOP_IN_EVALUATION_AFTER_STEP"]), True,
                                                        sigterm_through_torchrun)
    train.main()


if __name__ == "__main__":
    main()
