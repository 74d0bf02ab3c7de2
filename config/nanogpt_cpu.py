# nanoGPT's CPU recipe for Shakespeare-char, setting for setting: the in-house reference that config/cpu.py is
# measured against, side by side on the same machine (BENCHMARKS.md).
#   python train.py config/nanogpt_cpu.py
# nanoGPT runs it as: train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
# --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
# --lr_decay_iters=2000 --dropout=0.0

out_dir = "out/nanogpt_cpu"
data_dir = "data/shakespeare_char"
device = "cpu"
dtype = "float32"  # nanoGPT's fast path is off on a CPU: float32, eager
compile = False
always_save_checkpoint = False  # from train_shakespeare_char.py: ckpt.pt only when the val loss improves

eval_interval = 250  # from train_shakespeare_char.py
eval_iters = 20  # the train loss from 20 batches' worth of tokens, as nanoGPT's
eval_tokens = 15_360  # the val loss from as many (20 x 12 x 64), as nanoGPT's: an estimate at nanoGPT's cost
eval_sample_chars = 0  # nanoGPT writes no text while it trains
log_interval = 10  # nanoGPT logs every step (--log_interval=1); each log here reads the loss, a host sync

batch_size = 12
block_size = 64
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta1 = 0.9
beta2 = 0.99
weight_decay = 0.1
grad_clip = 1.0
warmup_iters = 100
