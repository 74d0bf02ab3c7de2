# The fastest recipe here to a val loss of 1.89 on a 2-core CPU: under a minute from launch, a third of the time
# nanoGPT's CPU recipe (config/nanogpt_cpu.py) takes to end at 1.90 on the same machine (BENCHMARKS.md).
#   python train.py config/cpu.py
# config/cpu_2min.py has the same model trained 3 times longer, to 1.68.
# With so little compute, the number of optimizer steps matters most: a shallow model at a high learning rate, on
# small batches, decaying to min_lr by the last step. Torch.compile does not pay on a CPU at this length: it takes
# longer to compile than the 10% it saves per step would give back.

out_dir = "out/cpu"
data_dir = "data/shakespeare_char"
device = "auto"  # a GPU if there is one (then this finishes in seconds), else the CPU

max_iters = 900
eval_interval = 900  # evaluate at the start and the end only: each evaluation reads the whole val split
eval_iters = 20
log_interval = 50

batch_size = 16
block_size = 64  # a short context: longer blocks cost more per token than they give back this early

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0  # too few steps to overfit: dropout would only slow learning

learning_rate = 4e-3  # high for a transformer, fine for one this small and shallow
lr_decay_iters = -1  # decay over all of max_iters
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50
