# Experiment: a wider residual stream (192 / 4 heads = 48 per head): about 2.2x the parameters.
from config.cpu_2min_adamw import *

n_embd = 192
out_dir = "out/cpu_bigger_embd"
