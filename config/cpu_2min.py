# The best val loss here within nanoGPT's CPU recipe's wall time (about 2 minutes on 2 cores): config/cpu.py's
# recipe (Muon, rotary positions) with a 128-character block and 1,300 steps. The search is in EXPERIMENTS.md; the
# timings, measured beside nanoGPT's recipe, in BENCHMARKS.md.
#   python train.py config/cpu_2min.py
# torch.compile stays off (compile = auto is on for CUDA only): on a CPU, compiling takes longer than a run this short
# would save.

out_dir = "out/cpu_2min"
data_dir = "data/shakespeare_char"
device = "auto"  # a GPU if there is one (then this finishes in seconds), else the CPU

max_iters = 1300
eval_interval = 650  # each evaluation reads the whole val split, so evaluate only 3 times
eval_at_start = False  # the untrained model's loss (about ln 65 = 4.17) is known without waiting for it
eval_iters = 20
log_interval = 50

batch_size = 16
block_size = 128  # with Muon, a longer context paid for its cost per step (EXPERIMENTS.md)

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0  # too few steps to overfit: dropout would only slow learning

optimizer = "muon"
muon_learning_rate = 0.04  # cpu.py's, the best of two sweeps (EXPERIMENTS.md)
learning_rate = 8e-3  # AdamW's rate for the embeddings and gains, as in cpu.py
lr_decay_iters = -1  # decay over all of max_iters
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 25
weight_decay = 0.0  # with Muon, 0 did better than 0.1 (EXPERIMENTS.md): a run this short does not overfit
position_encoding = "rope"
