#!/usr/bin/env bash
# GPU smoke + figures for the pretraining seams (run from the repo root on a CUDA machine with the project's Python
# stack; set PYTHON, and PYTHONPATH if packages such as omegaconf come from elsewhere). Writes JSON into ${OUT:-.}:
#  * VideoMAE V2 ViT-B 16x224² bf16: decoder-masked step vs the full decoder and vs all tokens visible;
#  * the same at ViT-S 16x112²;
#  * a CUDA pretraining run on the built-in digits with dual masking, then a resume to one more epoch.
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
