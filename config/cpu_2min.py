# A recipe for a laptop or a 2-core machine: a budget of about two minutes of training.
#   python train.py config/cpu_2min.py
# Chosen from runs of different shapes and schedules at that budget on 2 CPU cores (docs/recipes.md). With so little
# compute, the number of optimizer steps matters most: a shallow model at a high learning rate takes more steps in
# the budget, and ends lower than nanoGPT's 4-layer CPU recipe.

out_dir = "out/cpu_2min"
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
