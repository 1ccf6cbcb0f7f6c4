#!/usr/bin/env bash
# OVR-CNN 48/17 split of COCO 2017 for CPL/XPM.  Usage: coco_ovr_48_17.sh COCO_ROOT OUT_DIR
set -euo pipefail
root=${1:?COCO root (with annotations/)}; out=${2:?output folder}
exec "${OVIS:-ovis}" splits --protocol coco_ovr_48_17 \
  --train-instances "$root/annotations/instances_train2017.json" \
  --val-instances "$root/annotations/instances_val2017.json" \
  --train-captions "$root/annotations/captions_train2017.json" \
  --out "$out"
