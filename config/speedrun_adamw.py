# A runner-up of config/speedrun.py: AdamW for every weight (one fused kernel a step) in place of Muon: a cheaper step,
# more steps, and a target that nanoGPT's AdamW recipe only just reaches (BENCHMARKS.md).
#   python bench.py config/speedrun.py config/speedrun_adamw.py --target_loss=1.4697
from config.speedrun import *

out_dir = "out/speedrun_adamw"
optimizer = "adamw"
learning_rate = 1.5e-3  # config/baseline.py's 1e-3 times sqrt(2) for the doubled batch
weight_decay = 0.1  # baseline.py's
warmup_iters = 100
eval_interval = 1600
max_iters = 1600  # predicted crossing near step 1,400 (EXPERIMENTS.md)
