# nanoGPT's Shakespeare-char recipe: a 10.7M-parameter character-level GPT. A GPU recipe, far too slow for a CPU
# (BENCHMARKS.md): use config/cpu.py there.
#   python train.py config/baseline.py

out_dir = "out/baseline"
data_dir = "data/shakespeare_char"

eval_interval = 250  # the model overfits this small text: evaluate often; best.pt keeps the best weights
eval_iters = 200
log_interval = 10

batch_size = 64
block_size = 256  # 256 characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small model can take a high learning rate
max_iters = 5000
lr_decay_iters = -1  # -1: decay until max_iters, so a config that changes max_iters stretches the schedule too
min_lr = 1e-4  # learning_rate / 10, as in the Chinchilla paper
beta2 = 0.99  # a little above nanoGPT's 0.95 default because there are few tokens per iteration
warmup_iters = 100
