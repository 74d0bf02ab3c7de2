# A runner-up of config/speedrun.py: twice its batch (65,536 tokens a step) for a GPU busier per launch, fewer steps.
#   python bench.py config/speedrun.py config/speedrun_bigbatch.py --target_loss=1.4697
from config.speedrun import *

out_dir = "out/speedrun_bigbatch"
batch_size = 256  # x 256 = 65,536 tokens per step
eval_interval = 1150
max_iters = 1150  # predicted crossing near step 975 (EXPERIMENTS.md)
