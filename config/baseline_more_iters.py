# Experiment: train twice as long. The schedule stretches with it (lr_decay_iters = -1 follows max_iters).
from config.baseline import *

max_iters = 10000
out_dir = "out/baseline_more_iters"
