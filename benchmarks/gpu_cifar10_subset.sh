#!/bin/bash
# The cifar10-subset frontier with preact-resnet18 on a GPU (issue 25's GPU half), resumable
# across device calls. A call brings back no model file (16 MiB a file, 64 MiB in all; a
# preact-resnet18 is 43 MiB), so the suite runs group by group, each group the runs whose best
# on validation AutoAttack evaluates (the suite's autoattack.group: family and budget; a run of
# no group, a validation run, is a group of its own), each as `erat reproduce --only GROUP`.
# A group that ends (trained, PGD-evaluated, its best AutoAttacked) has its weights dropped
# (erat.rundir.RunDir.drop_weights: model-meta.json keeps what the report needs) and is packed;
# a group cut by the deadline is removed whole and runs again in a later call. Groups already
# packed by an earlier call ($PREV) are skipped. Order: validation runs, then budgets 30, 60,
# 120. PART=val runs only the validation runs (to confirm the lr in the suite's defaults before
# the frontier), PART=frontier only the groups; default all.
# Usage (repository root; the device tool carrying data/cifar10-subset, data/site (pyautoattack:
# its package folder without examples/model_test.pt, and its dist-info) and data/c10-resnet):
#   OUT=DIR C10=data/cifar10-subset PREV=data/c10-resnet/runs.tgz SECONDS_LEFT=540 \
#     bash benchmarks/gpu_cifar10_subset.sh
# (SUITE, RUNS and DEVICE: another suite, run folder and device; tests/test_scripts.py runs
# the script on the CPU with a small suite of digits.)
# Back here: tar xzf runs.tgz -C runs/c10-resnet, then `erat reproduce cifar10-subset-resnet
#   --data-dir data/cifar10-subset --out runs/c10-resnet --report-only` (results.md, plots).
set -u
OUT=${OUT:?set OUT}; C10=${C10:?set C10}
# SECONDS_LEFT: the device call's timeout_s; the groups stop RESERVE seconds (default 90)
# before it, for the packing and the report after them
PY=${PY:-python3}; END=$((SECONDS + ${SECONDS_LEFT:-540} - ${RESERVE:-90})); PART=${PART:-all}
SUITE=${SUITE:-cifar10-subset-resnet}; R=${RUNS:-runs/c10-resnet}; DEVICE=${DEVICE:-cuda}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [ -d data/site ]; then export PYTHONPATH=$PWD/data/site:$PYTHONPATH; fi
mkdir -p "$OUT" "$R"
exec > >(tee -a "$OUT/suite.log") 2>&1
if [ -n "${PREV:-}" ] && [ -f "$PREV" ]; then tar xzf "$PREV" -C "$R"; fi

# one line per group, "grouped budget run,run,...", in the order the groups run
$PY - "$SUITE" "$PART" > "$OUT/groups.txt" <<'EOF' || exit 1
import sys
from erat.suites import identity, load_suite, run_config

suite, part = load_suite(sys.argv[1]), sys.argv[2]
keys = (suite.get("autoattack") or {}).get("group", [])
groups: dict[tuple, list[str]] = {}
for run in suite["runs"]:
    row = identity(run, run_config(suite, run, {}))
    key = tuple(row.get(k) for k in keys)
    grouped = bool(keys) and None not in key
    groups.setdefault((grouped, row.get("budget") or 0, key if grouped else run["name"]),
                      []).append(run["name"])
for grouped, budget, _ in sorted(groups, key=lambda k: k[:2]):  # (stable: the suite's order)
    if part == "all" or (part == "frontier") == grouped:
        print(int(grouped), budget, ",".join(groups[grouped, budget, _]))
EOF

$PY -c "import pyautoattack" || { echo "no pyautoattack here: carry data/site (the usage above)"; exit 1; }

packed() { [ -f "$R/runs/$1/model-meta.json" ]; }
while read -r grouped budget group <&3; do
  IFS=, read -r -a names <<< "$group"
  todo=0; for n in "${names[@]}"; do packed "$n" || todo=1; done
  [ $todo = 0 ] && continue
  left=$((END - SECONDS))
  if [ "$left" -lt 30 ]; then echo "left for a later call (deadline): $group"; continue; fi
  echo "== $(date +%T) group $group (budget $budget), ${left}s left"
  timeout -k 10 "$left" $PY -m erat reproduce "$SUITE" --data-dir "$C10" --out "$R" \
    --device "$DEVICE" --only "$group"
  rc=$?
  if [ $rc = 0 ] || [ $rc = 3 ]; then  # (3: finished, a sanity check failed: the report says)
    $PY -c "import sys; from erat.rundir import RunDir; [RunDir(p).drop_weights() for p in sys.argv[1:]]" \
      "${names[@]/#/$R/runs/}" || echo "dropping the weights of $group failed: not packed"
  elif [ $rc = 124 ] || [ $rc = 137 ]; then  # (the deadline: the group runs again whole)
    echo "group $group cut by the deadline: removed, it runs again whole in a later call"
    for n in "${names[@]}"; do packed "$n" || rm -rf "${R:?}/runs/$n"; done
  else  # (an error that a later call would meet again: kept as it is for a look, and stop)
    echo "group $group ended with exit $rc: its folders are kept unpacked; stopping"
    break
  fi
done 3< "$OUT/groups.txt"

# the groups that ended, weights dropped (a kill during tar never leaves a truncated runs.tgz)
(cd "$R" && find runs -mindepth 2 -maxdepth 2 -name model-meta.json -printf '%h\n' | sort) \
  > "$OUT/packed.txt"
echo "packed $(wc -l < "$OUT/packed.txt") run folders"
tar czf "$OUT/.runs.tgz.part" --exclude='*.pt' --exclude='.lock' -C "$R" -T "$OUT/packed.txt" \
  && mv -f "$OUT/.runs.tgz.part" "$OUT/runs.tgz"
timeout 60 $PY -m erat reproduce "$SUITE" --data-dir "$C10" --out "$R" --report-only \
  && cp "$R/results.md" "$OUT/results.md"
