# Experiment: weaker regularisation: faster learning early, more overfitting late.
from config.baseline import *

dropout = 0.1
out_dir = "out/baseline_less_dropout"
