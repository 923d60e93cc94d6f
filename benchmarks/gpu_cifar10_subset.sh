#!/bin/bash
# The cifar10-subset frontier with preact-resnet18 on a GPU (issue 25's GPU half), resumable
# across device calls: unpacks the run folders an earlier call brought back ($PREV, a tarball),
# runs `erat reproduce cifar10-subset-resnet` for up to $SECONDS_LEFT seconds (the runs named in
# $ONLY, or the whole suite), then packs every run folder without the model files that are no
# longer needed (checkpoints; model.pt is kept for AutoAttack and the report).
# Usage (repository root, the device tool carrying data/cifar10-subset and data/c10-resnet):
#   OUT=DIR C10=data/cifar10-subset PREV=data/c10-resnet/runs.tgz SECONDS_LEFT=420 \
#     ONLY=lr-erm-val-lr0.01,... bash benchmarks/gpu_cifar10_subset.sh
set -u
OUT=${OUT:?set OUT}; C10=${C10:?set C10}
PY=${PY:-python3}; LEFT=${SECONDS_LEFT:-420}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$OUT" runs/c10-resnet
exec > >(tee -a "$OUT/suite.log") 2>&1
[ -n "${PREV:-}" ] && [ -f "$PREV" ] && tar xzf "$PREV" -C runs/c10-resnet
timeout "$LEFT" $PY -m erat reproduce cifar10-subset-resnet --data-dir "$C10" \
  --out runs/c10-resnet --device cuda ${ONLY:+--only "$ONLY"}
echo "reproduce exit $?"
# written beside and renamed: a kill during tar never leaves a truncated runs.tgz
tar czf "$OUT/.runs.tgz.part" --exclude='checkpoint.pt' --exclude='best.pt' -C runs/c10-resnet . \
  && mv -f "$OUT/.runs.tgz.part" "$OUT/runs.tgz"
