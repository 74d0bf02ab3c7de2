# Experiment: dropout 0.1 (cpu_2min.py has none, so 'less dropout' is not possible here; see cpu_much_more_dropout.py).
from config.cpu_2min_adamw import *

dropout = 0.1
out_dir = "out/cpu_more_dropout"
