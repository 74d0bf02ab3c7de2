# Experiment: double the peak learning rate.
from config.cpu_2min import *

learning_rate = 8e-3
out_dir = "out/cpu_higher_lr"
