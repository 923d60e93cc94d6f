#!/bin/bash
# One GPU session, sized for about 7 minutes on one H100 (a lent device has 15 minutes in all):
#  1. the device: GPU, driver, torch;
#  2. erat bench: preact-resnet18 at 3x32x32 (CIFAR-10/SVHN shape), every method, float32 and
#     bf16; then `cnn` at 1x28x28 with the Fashion-MNIST suite's methods, float32;
#  3. the largest budget of the Fashion-MNIST frontier trained and tested on the GPU: ER S=3 and
#     PGD-AT-10 at budget 16 (the suite's settings as flags), PGD-l2 on all 10,000 test images at
#     four radii, then PGD with 5 restarts and AutoAttack at 1.5 on the first 500.
# Usage (repository root): OUT=DIR FM=DIR_WITH_FASHION_MNIST_IDX bash benchmarks/gpu_session.sh
# Needs torch with CUDA and pyautoattack importable (add its folder to PYTHONPATH where pip cannot
# reach an index). Everything lands in $OUT: session.log and gpu.tgz (JSON of every step).
set -u
OUT=${OUT:?set OUT to a folder for the results}
FM=${FM:?set FM to the folder holding the Fashion-MNIST IDX files}
PY=${PY:-python3}
W=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
exec > >(tee -a "$OUT/session.log") 2>&1
pack() { tar czf "$OUT/gpu.tgz" -C "$W" . ; }
stamp() { echo "== $(date +%T) $*"; }

stamp device
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

stamp bench preact-resnet18
timeout 240 $PY -m erat bench --models preact-resnet18:3x32x32 --amp none,bf16 --steps 200 \
  --warmup 5 --max-seconds 6 --no-attacks --device cuda --json "$W/check-resnet18.json"
pack
stamp bench cnn
timeout 120 $PY -m erat bench --models cnn:1x28x28 --steps 300 --warmup 5 --max-seconds 4 \
  --no-attacks --device cuda --json "$W/check-cnn.json" \
  --methods "erm,at,vat,pgd:steps=1,pgd:steps=3,pgd:steps=10,trades:steps=3,trades:steps=10,er:S=1,er:S=3"
pack

SUITE=(--dataset fashion-mnist --data-dir "$FM" --model cnn --batch-size 128 --optimizer adam
  --lr 0.001 --schedule cosine --seed 0 --val 5000 --val-n 1000 --val-steps 10 --val-eps 1.5
  --select best-robust --budget 16 --budget-epochs 8 --no-progress --device cuda)
for run in "er3 --method er --eps 1.5 --S 3 --lam 1.0" "pgd10 --method pgd --eps 1.5 --steps 10"; do
  set -- $run
  name=$1; shift
  stamp "train $name"
  timeout 200 $PY -m erat train "${SUITE[@]}" "$@" --out "$W/$name"
  stamp "eval $name: PGD-l2, 50 steps, all 10,000"
  timeout 90 $PY -m erat eval "$W/$name" --device cuda --norm l2 --eps 0.5,1.0,1.5,2.0 \
    --steps 50 --restarts 1 --json "$W/$name-pgd.json"
  stamp "eval $name: PGD (5 restarts) then AutoAttack at 1.5, first 500"
  timeout 150 $PY -m erat eval "$W/$name" --device cuda --attack all --norm l2 --eps 1.5 \
    --restarts 5 --n 500 --json "$W/$name-aa.json"
  rm -f "$W/$name"/*.pt
  pack
done
stamp done
