# The previous config/cpu_2min.py (until 2026-11-25): AdamW, block 64, 2,700 steps, 1.6782. The one-change experiments
# (config/cpu_*.py) and config/tuned.py build on it, so their figures in docs/recipes.md stay as measured.

out_dir = "out/cpu_2min_adamw"
data_dir = "data/shakespeare_char"
device = "auto"  # a GPU if there is one (then this finishes in seconds), else the CPU

eval_interval = 675  # each evaluation reads the whole val split, so evaluate only 4 times
eval_iters = 20
log_interval = 50

batch_size = 16
block_size = 64  # a short context: longer blocks cost more per token than they gave back in two minutes

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0  # too few steps to overfit: dropout would only slow learning

learning_rate = 4e-3  # high for a transformer, fine for one this small and shallow
max_iters = 2700
lr_decay_iters = -1  # decay over all of max_iters
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50
