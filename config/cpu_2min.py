# The best val loss here within nanoGPT's CPU recipe's wall time (about 2 minutes on 2 cores): config/cpu.py's
# recipe (Muon, rotary positions) with a 128-character block and 1,300 steps. The search is in EXPERIMENTS.md; the
# timings, measured beside nanoGPT's recipe, in BENCHMARKS.md.
#   python train.py config/cpu_2min.py
from config.cpu import *

out_dir = "out/cpu_2min"

block_size = 128  # with Muon, a longer context paid for its cost per step (EXPERIMENTS.md)
max_iters = 1300
eval_interval = 650  # each evaluation reads the whole val split, so evaluate only 3 times
