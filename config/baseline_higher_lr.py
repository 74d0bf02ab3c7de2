# Experiment: double the peak learning rate (min_lr stays at 1e-4).
from config.baseline import *

learning_rate = 2e-3
out_dir = "out/baseline_higher_lr"
