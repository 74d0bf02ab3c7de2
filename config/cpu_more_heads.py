# Experiment: twice the heads, each half as wide (128 / 8 = 16 dimensions).
from config.cpu_2min_adamw import *

n_head = 8
out_dir = "out/cpu_more_heads"
