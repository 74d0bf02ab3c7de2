# The best found with subword tokens in 2 minutes of training on a CPU: config/cpu_2min.py's recipe on Tiny
# Shakespeare as 512 BPE tokens (about 1.9 characters a token), 2 layers and a block of 64 tokens (about 124
# characters). Compare it with cpu_2min.py in bits per character (val_bpc): the study is in EXPERIMENTS.md
# ("Subword tokens against characters"), its figures beside nanoGPT's recipe in BENCHMARKS.md.
#   python train.py config/cpu_bpe.py      # prepares data/shakespeare_bpe512 first (pip install tokenizers)
from config.cpu_2min import *

out_dir = "out/cpu_bpe"
data_dir = "data/shakespeare_bpe512"  # train.py prepares it from the shipped text, once
n_layer = 2  # the study's model: a third layer was not tried with BPE tokens
block_size = 64  # tokens: about as many characters as cpu_2min.py's 128, at half the cost per step
