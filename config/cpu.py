# The fastest recipe here on a 2-core CPU: config/cpu_classic.py's model and batches, with the two options that won
# the equal-compute ablation in EXPERIMENTS.md and still helped together: Muon for the blocks' weight matrices and
# rotary positions. A Muon step costs more CPU time than an AdamW step, so this takes fewer steps than
# cpu_classic.py, in about the same wall time (BENCHMARKS.md).
#   python train.py config/cpu.py
from config.cpu_classic import *

out_dir = "out/cpu"

max_iters = 550
eval_interval = 550  # evaluate at the start and the end only: each evaluation reads the whole val split

optimizer = "muon"
muon_learning_rate = 0.04  # the best of a sweep (EXPERIMENTS.md); AdamW keeps 4e-3 for the embeddings and gains
weight_decay = 0.0  # with Muon, 0 did better than 0.1 (EXPERIMENTS.md): a run this short does not overfit
position_encoding = "rope"
