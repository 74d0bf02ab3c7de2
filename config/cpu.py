# The fastest recipe here to a val loss of 1.89 on a 2-core CPU: config/cpu_classic.py's batches, with the two options
# that won the equal-compute ablation in EXPERIMENTS.md and still helped together, Muon for the blocks' weight
# matrices and rotary positions, and the width, steps and AdamW rate of the searches for speed in EXPERIMENTS.md.
#   python train.py config/cpu.py
# torch.compile stays off (compile = auto is on for CUDA only): on a CPU, compiling takes longer than a run this short
# would save.

out_dir = "out/cpu"
data_dir = "data/shakespeare_char"
device = "auto"  # a GPU if there is one (then this finishes in seconds), else the CPU

max_iters = 475  # the fewest steps that reach 1.89 with a margin over seeds (EXPERIMENTS.md, Search 5)
eval_interval = 475  # evaluate at the end only: each evaluation reads the whole val split
eval_at_start = False  # the untrained model's loss (about ln 65 = 4.17) is known without waiting for it
eval_iters = 20
log_interval = 50

batch_size = 16
block_size = 64  # a short context: longer blocks cost more per token than they give back this early

n_layer = 2
n_head = 2  # 2 heads of 40 learned as well as 4 of 20, and cost less on a CPU (EXPERIMENTS.md, Search 5)
n_embd = 80  # narrower than 128: its cheaper steps more than pay for the extra ones it needs (EXPERIMENTS.md, Search 5)
dropout = 0.0  # too few steps to overfit: dropout would only slow learning

optimizer = "muon"
muon_learning_rate = 0.04  # the best of two sweeps (EXPERIMENTS.md)
learning_rate = 8e-3  # AdamW's rate for the embeddings and gains: twice cpu_classic.py's, for a run this short
lr_decay_iters = -1  # decay over all of max_iters
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 25
weight_decay = 0.0  # with Muon, 0 did better than 0.1 (EXPERIMENTS.md): a run this short does not overfit
position_encoding = "rope"
