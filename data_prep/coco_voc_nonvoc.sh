#!/usr/bin/env bash
# VOC (20) -> non-VOC (60) split of COCO 2017 for OLN/GGN.  Usage: coco_voc_nonvoc.sh COCO_ROOT OUT_DIR
set -euo pipefail
root=${1:?COCO root (with annotations/)}; out=${2:?output folder}
exec "${OVIS:-ovis}" splits --protocol coco_voc_nonvoc \
  --train-instances "$root/annotations/instances_train2017.json" \
  --val-instances "$root/annotations/instances_val2017.json" \
  --out "$out"
