# The best val loss here in 2 minutes of training on a CPU, whatever the CPU: config/cpu.py's recipe (Muon, rotary
# positions) with a third layer and a 128-character block, for max_time = 120 seconds. A faster CPU takes more steps
# in them, a slower one fewer; each gets a whole learning-rate schedule (train.py's schedule_position). The search is
# in EXPERIMENTS.md; what it reached on each machine measured, beside nanoGPT's recipe, in BENCHMARKS.md.
#   python train.py config/cpu_2min.py
# torch.compile stays off (compile = auto is on for CUDA only): on a CPU, compiling takes longer than a run this short
# would save.

out_dir = "out/cpu_2min"
data_dir = "data/shakespeare_char"
device = "auto"  # a GPU if there is one (then max_iters ends it, in seconds), else the CPU

max_time = 120  # seconds of training (evaluations not counted)
max_iters = 5000  # at most: 2 CPU cores take 1,400-2,000 steps in 120 s; also the scale warmup_iters is read on
eval_interval = 5000  # evaluate at the end only: each evaluation reads the whole val split
eval_at_start = False  # the untrained model's loss (about ln 65 = 4.17) is known without waiting for it
eval_iters = 20
log_interval = 50

batch_size = 16
block_size = 128  # with Muon, a longer context paid for its cost per step (EXPERIMENTS.md)

n_layer = 3  # in 120 s a third layer paid for its cost per step (EXPERIMENTS.md)
n_head = 4
n_embd = 128
dropout = 0.0  # too few steps to overfit: dropout would only slow learning

optimizer = "muon"
muon_learning_rate = 0.04  # cpu.py's, the best of two sweeps (EXPERIMENTS.md)
learning_rate = 8e-3  # AdamW's rate for the embeddings and gains, as in cpu.py
lr_decay_iters = -1  # decay over all of max_iters: with max_time, over the whole budget
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50  # 1% of the schedule: about a second
weight_decay = 0.0  # with Muon, 0 did better than 0.1 (EXPERIMENTS.md): a run this short does not overfit
position_encoding = "rope"
