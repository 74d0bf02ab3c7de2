# 2 layers x 128 with GPT-2's architecture (learned positions, GELU MLP, LayerNorm) trained with AdamW: the recipe
# config/cpu.py was before it took Muon, rotary positions and a narrower model, kept to compare against (BENCHMARKS.md).
#   python train.py config/cpu_classic.py
# With so little compute, the number of optimizer steps matters most: a shallow model at a high learning rate, on
# small batches, decaying to min_lr by the last step. torch.compile stays off (compile = auto is on for CUDA only):
# on a CPU, compiling takes longer than a run this short would save.

out_dir = "out/cpu_classic"
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
