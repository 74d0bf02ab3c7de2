# Pretrain, then fine-tune: a model pretrained on Tiny Shakespeare without the speeches of Richard of Gloucester (named
# GLOUCESTER, then KING RICHARD III once crowned) learns his voice from them, at a lower learning rate than its
# pretraining's. Both texts come from data/shakespeare_char/input.txt and share no speech; each has its own val split
# (its last 10%). The study behind these values is in EXPERIMENTS.md; docs/finetuning.md explains the keys.
#   python prepare_shakespeare.py --input=data/shakespeare_char/input.txt --data_dir=data/shakespeare_but_richard \
#       --drop_speakers="GLOUCESTER,KING RICHARD III"
#   python prepare_shakespeare.py --input=data/shakespeare_char/input.txt --data_dir=data/richard \
#       --keep_speakers="GLOUCESTER,KING RICHARD III"
#   python train.py config/finetune_richard_pretrain.py    # pretraining: 1.5846 in 106 s on 2 CPU cores
#   python train.py config/finetune_richard.py             # this file: 1.677 -> 1.3248 on Richard's text in 24 s
#   python train.py config/finetune_richard.py --init_from=out/finetune_richard \
#       --data_dir=data/shakespeare_but_richard --eval_only    # forgetting: the pretraining text's val loss now
#   python compare.py out/finetune_richard_pretrain out/finetune_richard --start="GLOUCESTER:" \
#       --output=out/compare_richard                       # samples before and after
# The model's shape and vocabulary come from the pretrained run's best.pt: no shape key is set here.

init_from = "out/finetune_richard_pretrain"
out_dir = "out/finetune_richard"
data_dir = "data/richard"

max_iters = 300
eval_interval = 25  # the val split is 6,046 characters: evaluating often is cheap, and shows any overfitting
eval_iters = 20
log_interval = 25
batch_size = 16
dropout = 0.0  # as in pretraining; 0.1 gave 1.366 against 1.330, and 300 steps at this rate do not overfit

optimizer = "adamw"  # the pretraining used Muon; a fresh optimizer either way
learning_rate = 1e-4  # 80 times below the pretraining's AdamW rate: the best of 1e-4 to 1e-2, and the least forgetting
min_lr = 1e-5
warmup_iters = 20
weight_decay = 0.1
