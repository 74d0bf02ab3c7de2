# A runner-up of config/speedrun.py: AdamW for every weight and twice its batch (65,536 tokens a step).
#   python bench.py config/speedrun.py config/speedrun_adamw_bigbatch.py --target_loss=1.4697
from config.speedrun import *

out_dir = "out/speedrun_adamw_bigbatch"
batch_size = 256  # x 256 = 65,536 tokens per step
optimizer = "adamw"
learning_rate = 2e-3  # config/baseline.py's 1e-3 times sqrt(4) for four times its batch
weight_decay = 0.1
warmup_iters = 100
eval_interval = 1450
max_iters = 1450  # predicted crossing near step 1,250 (EXPERIMENTS.md)
