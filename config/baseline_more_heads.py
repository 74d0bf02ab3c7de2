# Experiment: twice the heads, each half as wide (384 / 12 = 32 dimensions): more, smaller attention patterns.
from config.baseline import *

n_head = 12
out_dir = "out/baseline_more_heads"
