"""Write run directories with the code on PYTHONPATH (the previous main): a pretraining run with pixel + momentum
targets, and a fine-tuning run initialised from it. Made with commit 2c28ad7, from the repository root:

    git worktree add /tmp/oldmain 2c28ad7 && cd /tmp/oldmain
    PYTHONPATH=/tmp/oldmain python tests/data/previous_main/generate.py /tmp/fx/runs   # (this file, copied there)
    PYTHONPATH=/tmp/oldmain python -m vmim.cli eval /tmp/fx/runs/finetune eval.num_views=1 eval.num_crops=1

then tb/ and log.txt removed; the eval's predictions file is finetune_run_eval_predictions.tsv."""
import sys
from pathlib import Path

from vmim.config import load_config
from vmim.engine.finetune import finetune
from vmim.engine.pretrain import pretrain

out = Path(sys.argv[1])
common = ["model.backbone=vit_test", "model.patch_size=4", "data.img_size=16", "data.num_frames=4",
          "data.num_workers=0", "data.batch_size=8", "train.steps_per_epoch=2", "train.epochs=1",
          "train.precision=fp32", "log.every_steps=1", "log.progress_bar=false", "log.image_every_steps=0",
          "checkpoint.every_steps=1"]
cfg = load_config("configs/demo/digits.yaml", [f"output_dir={out}/pretrain", *common,
                  "targets.momentum.kind=momentum", "targets.momentum.head.depth=1", "targets.momentum.head.dim=32",
                  "targets.momentum.head.heads=2", "targets.pixel.head.depth=1", "targets.pixel.head.dim=32",
                  "targets.pixel.head.heads=2"])
pretrain(cfg)
ft = load_config("configs/demo/motion_finetune.yaml", [f"output_dir={out}/finetune", f"init={out}/pretrain", *common,
                 "eval.every_epochs=1", "eval.batch_size=8", "data.datasets.motion.fraction=0.02",
                 "model.drop_path=0.0"])
finetune(ft)
