"""Config files: plain Python whose top-level assignments override train.py's TrainConfig defaults.

A config may build on another with `from config.baseline import *` and change a line. Config files run as code,
so only use ones you trust.
"""
