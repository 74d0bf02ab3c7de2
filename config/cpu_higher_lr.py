# Experiment: double the peak learning rate.
from config.cpu import *

learning_rate = 8e-3
out_dir = "out/cpu_higher_lr"
