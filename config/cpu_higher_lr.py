# Experiment: double the peak learning rate.
from config.cpu_2min_adamw import *

learning_rate = 8e-3
out_dir = "out/cpu_higher_lr"
