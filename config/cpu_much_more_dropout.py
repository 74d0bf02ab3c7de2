# Experiment: dropout 0.2, as in the GPU baseline.
from config.cpu_2min_adamw import *

dropout = 0.2
out_dir = "out/cpu_much_more_dropout"
