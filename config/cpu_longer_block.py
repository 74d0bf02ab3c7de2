# Experiment: twice the context (128 characters) at the same number of steps: twice the tokens per step.
from config.cpu_2min_adamw import *

block_size = 128
out_dir = "out/cpu_longer_block"
