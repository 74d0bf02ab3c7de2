# The pretraining run of config/finetune_richard.py (whose comments give every command in order): config/cpu_2min.py's
# recipe on Tiny Shakespeare without the speeches of Richard of Gloucester, which the fine-tuning run learns from.
#   python train.py config/finetune_richard_pretrain.py
from config.cpu_2min import *

out_dir = "out/finetune_richard_pretrain"
data_dir = "data/shakespeare_but_richard"  # prepare_shakespeare.py --drop_speakers="GLOUCESTER,KING RICHARD III"
