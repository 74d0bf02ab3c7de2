# Experiment: twice the context. Each step also sees twice the tokens and costs more than twice as much.
from config.baseline import *

block_size = 512
out_dir = "out/baseline_longer_block"
