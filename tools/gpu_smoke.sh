#!/usr/bin/env bash
# GPU smoke + figures for the pretraining seams (run from the repo root on a CUDA machine with the project's Python
# stack; set PYTHON, and PYTHONPATH if packages such as omegaconf come from elsewhere). Writes JSON into ${OUT:-.}:
#  * VideoMAE V2 ViT-B 16x224² bf16: decoder-masked step vs the full decoder and vs all tokens visible;
#  * the same at ViT-S 16x112²;
#  * a CUDA pretraining run on the built-in digits with dual masking, then a resume to one more epoch;
#  * a CUDA fine-tuning run on the motion demo (bf16, every augmentation, EMA, validation) and its vmim eval.
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1
V2=configs/methods/videomae_v2_vit_b.yaml
D=data.datasets.digits_images.weight=1
$PYTHON -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
$PYTHON tools/bench_pretrain.py --config $V2 --modality video --steps 15 --warmup 5 --rounds 2 --json \
  $D data.batch_size=32 train.precision=bf16 | tee "$OUT/bench_v2_vitb_224_bf16.json"
$PYTHON tools/bench_pretrain.py --config $V2 --modality video --steps 15 --warmup 5 --rounds 2 --json \
  $D model.backbone=vit_small data.img_size=112 model.patch_size=8 data.batch_size=64 train.precision=bf16 \
  | tee "$OUT/bench_v2_vits_112_bf16.json"
RUN=$(mktemp -d)
for epochs in 2 3; do
  $PYTHON -m vmim.cli pretrain --config configs/demo/digits.yaml output_dir="$RUN" train.epochs=$epochs \
    data.num_workers=2 log.progress_bar=false decoder_masking.kind=running_cell targets.pixel.token_set=decoder_kept \
    2>&1 | grep -E "device|resumed|done" || true
done
# Fine-tuning on CUDA (bf16 autocast, mixup / cutmix / erasing on the device, EMA, validation), then vmim eval: the
# motion demo's configs for one short schedule each; the last line of each eval is the protocol line.
FT=$(mktemp -d)
$PYTHON -m vmim.cli pretrain --config configs/demo/motion_pretrain.yaml output_dir="$FT/pre" train.epochs=2 \
  log.progress_bar=false 2>&1 | grep -E "device|done" || true
$PYTHON -m vmim.cli finetune --config configs/demo/motion_finetune.yaml init="$FT/pre" output_dir="$FT/ft" \
  train.epochs=4 eval.every_epochs=2 ema.decay=0.99 augment.mixup=0.8 augment.cutmix=1.0 augment.random_erasing=0.25 \
  log.progress_bar=false 2>&1 | grep -E "device|val |done" || true
$PYTHON -m vmim.cli eval "$FT/ft" eval.num_views=2 eval.num_crops=3 | tail -2 | tee "$OUT/finetune_eval.txt"
