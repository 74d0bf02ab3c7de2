# Experiment: half the peak learning rate.
from config.baseline import *

learning_rate = 5e-4
out_dir = "out/baseline_lower_lr"
