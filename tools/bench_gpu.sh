#!/usr/bin/env bash
# Issue-12 GPU figures in one go (< 5 min on an H100/H200): run from the repo root on a CUDA machine with the
# project's Python stack (set PYTHON). Prints, and writes JSON into ${OUT:-.}:
#  1. VideoMAE ViT-B 16x224², 90 % tube masking, decoder 4 x 384, bf16, batch 32: vmim's step against VideoMAE's own
#     model (tools/reference_videomae.py, --baseline videomae) in the same rounds, with TFLOP/s, MFU against the
#     datasheet's dense bf16 peak, and peak CUDA memory of each (goal: >= 50 % MFU and >= 1.5x the reference);
#  2. the same step with train.compile (its compile time) and with activation checkpointing (its time cost and the
#     memory it saves) as variants;
#  3. MaskFeat MViT-S 16x224² (HOG targets, dense MViTv2) bf16, batch 16, with activation checkpointing as a variant;
#  4. the data loader (tools/bench_data.py: decode + sample + crop + mask + collate, H.264 clips made with PyAV)
#     with 4, 8 and 16 workers (batch 8): clips/s it can feed, to set against step 1's clips/s.
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1
VMAE=configs/methods/videomae_vit_b.yaml
$PYTHON -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
$PYTHON tools/bench_pretrain.py --config $VMAE --modality video --baseline videomae --no-baseline --steps 10 \
  --warmup 3 --rounds 2 --precisions bf16 data.batch_size=32 | tee "$OUT/bench_videomae_vitb_bf16_b32.txt"
$PYTHON tools/bench_pretrain.py --config $VMAE --modality video --no-baseline --steps 5 \
  --warmup 2 --rounds 1 --precisions bf16 --checkpointing --compile data.batch_size=32 \
  | tee "$OUT/bench_videomae_vitb_bf16_b32_compile_ckpt.txt"
$PYTHON tools/bench_pretrain.py --config configs/methods/maskfeat_mvit_s.yaml --modality video --no-baseline \
  --steps 6 --warmup 2 --rounds 1 --precisions bf16 --checkpointing data.batch_size=16 \
  | tee "$OUT/bench_maskfeat_mvits_bf16_b16.txt"
$PYTHON tools/bench_data.py --workers 4 8 16 --batch-size 8 --clips 128 --rounds 1 --repeat 2 \
  | tee "$OUT/bench_data_loader.txt"
