# The record attempt on one GPU: nanoGPT's Shakespeare-char budget (5,000 steps of 64 x 256 = 16,384 tokens, the
# same 6 layers, 6 heads and 384 wide), with the options that won the equal-compute ablation on a CPU
# (EXPERIMENTS.md) and still helped together: Muon for the blocks' weight matrices and rotary positions.
#   python train.py config/record.py
#   python tune.py config/record.py seed=1,2,3 --name=record    # the mean over 3 seeds
# Not yet measured on a GPU (BENCHMARKS.md): whether the options carry over to this size, and the learning rates
# here, are for the first GPU run to settle.
from config.baseline import *

out_dir = "out/record"

optimizer = "muon"
muon_learning_rate = 0.04  # config/cpu.py's; AdamW keeps learning_rate for the embeddings and gains
weight_decay = 0.0  # as in config/cpu.py; dropout (from baseline.py) regularises this longer run
position_encoding = "rope"
compile_mode = "reduce-overhead"  # CUDA graphs: they shortened config/baseline.py's run on an H200 (BENCHMARKS.md)
