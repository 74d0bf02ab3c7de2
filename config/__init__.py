"""Config files: plain Python whose top-level assignments override train.py's TrainConfig defaults.

A config may build on another with `from config.baseline import *` and change a line, but only on one that stands
alone, so that every recipe reads in at most two files (tests/test_config.py checks). Config files run as code, so
only use ones you trust.
"""
