# Experiment: train twice as long; the schedule stretches with max_iters.
from config.cpu_2min_adamw import *

max_iters = 5400
eval_interval = 1350
out_dir = "out/cpu_more_iters"
