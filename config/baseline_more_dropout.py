# Experiment: stronger regularisation against overfitting this small text.
from config.baseline import *

dropout = 0.3
out_dir = "out/baseline_more_dropout"
