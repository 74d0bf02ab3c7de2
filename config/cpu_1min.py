# A first run: the best val loss here in 1 minute of training on a CPU, whatever the CPU: config/cpu_2min.py's recipe
# for max_time = 60 seconds, with 2 narrower layers and a linear decay. The search is in EXPERIMENTS.md;
# what it reached on each machine measured, beside nanoGPT's recipe, in BENCHMARKS.md.
#   python train.py config/cpu_1min.py
from config.cpu_2min import *

out_dir = "out/cpu_1min"
max_time = 60  # seconds of training (evaluations not counted)
n_layer = 2  # in 60 s, a third layer's dearer steps did not pay (EXPERIMENTS.md)
n_embd = 96  # narrower than 128: in 60 s, more and cheaper steps paid (EXPERIMENTS.md)
lr_schedule = "linear"  # in a run this short, a straight line to min_lr beat the cosine (EXPERIMENTS.md)
