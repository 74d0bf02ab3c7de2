# Experiment: half the peak learning rate.
from config.cpu_2min_adamw import *

learning_rate = 2e-3
out_dir = "out/cpu_lower_lr"
