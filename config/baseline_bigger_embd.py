# Experiment: a wider residual stream (576 / 6 heads = 96 per head): about 2.2x the parameters.
from config.baseline import *

n_embd = 576
out_dir = "out/baseline_bigger_embd"
