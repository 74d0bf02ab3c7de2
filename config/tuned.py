# The best recipe the CPU study found (EXPERIMENTS.md): cpu_2min_adamw.py with the two changes that lowered the val loss
# most per second: a longer context and longer training.
#   python train.py config/tuned.py
from config.cpu_2min_adamw import *

block_size = 128  # twice cpu_2min_adamw.py's context
max_iters = 5000  # the schedule stretches with max_iters
eval_interval = 1250
out_dir = "out/tuned"
