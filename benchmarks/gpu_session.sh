#!/bin/bash
# The GPU check of the fast path (issue 24), one call of about 8 minutes on one H200 (a lent
# device has 15 minutes in all: room for a second try). Stages by priority, each under its own
# timeout, so that what finishes comes back (a stage the deadline reaches is skipped, said):
#  1. the device: GPU, driver, torch; a preflight of a tiny reduce-overhead graph;
#  2. erat bench --chip --profile on preact-resnet18 at batch 128 for the targets, ERM,
#     ER S 3 and PGD-AT-10: the card's bf16 matrix rate measured in this run, the model's FLOPs
#     per image (torch.utils.flop_counter), ms per step and images/s, eager float32 (cuDNN's
#     TF32 convolutions, torch's default) first (a few seconds each: every ratio has its
#     baseline), then the fast path; the fraction of the matrix rate reached, a 50,000-image
#     epoch's time, and a profile of each step (kernels per step, the device-busy share, the
#     model calls replayed as graphs against run eager: what holds a step back);
#  3. ER S 3 on the cifar10-subset trained fast and eager at the same settings (budget 30,
#     best validation epoch), PGD-l2 at 0.5 on all 1,017 test images side by side (one
#     evaluator for both: eager, `erat eval --fast off`);
#  4. ERM at batch 512 (the 40%-of-rate target);
#  5. 100 updates of ER S 3, fast and eager from one seed on the same batches: the two loss
#     curves (metrics.jsonl, 20 epochs of 5 updates);
#  6. the other methods at batch 128 (ER S 1, PGD-AT-3, TRADES-10, AT, VAT), eager and fast;
#  7. PGD-AT-3 trained and evaluated both ways as in 3;
#  8. the fast ER model evaluated again as CUDA graphs, twice in one process (the
#     graph-captured evaluation: the same accuracy; its time with and without compilation).
# Usage (repository root): OUT=DIR C10=DIR_WITH_cifar-10-batches-py bash benchmarks/gpu_session.sh
# (the device tool: carry data/cifar10-subset, then C10=data/cifar10-subset). Everything lands
# in $OUT: session.log and gpu.tgz (the JSON of every stage, metrics of every run);
# `python benchmarks/gpu_summary.py DIR` (DIR: $OUT as it came back) prints the figures as
# markdown tables, each of the targets met or missed.
# LIMIT (seconds, default 480, the 8 minutes above): the whole script's deadline; a stage gets
# at most what is left (and is skipped under 20 s), so the run call's limit never cuts a pack
# short. The bench's JSON is rewritten after every measured row ("complete": false until the
# last), and a method whose capture fails is a row with its error, not the end of the stage.
set -u
OUT=${OUT:?set OUT to a folder for the results}
C10=${C10:?set C10 to the folder holding cifar-10-batches-py}
PY=${PY:-python3}
END=$((SECONDS + ${LIMIT:-480}))
W=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
exec > >(tee "$OUT/session.log") 2>&1
TEE=$!
# written beside and renamed: a kill during tar never leaves a truncated gpu.tgz
# (tar's exit 1, "file changed as we read it", still leaves a whole archive)
pack() { tar czf "$OUT/.gpu.tgz.part" --exclude='*.pt' -C "$W" .; [ $? -le 1 ] && mv -f "$OUT/.gpu.tgz.part" "$OUT/gpu.tgz"; }
stamp() { echo "== $(date +%T) $*"; }
# limit SECONDS CMD...: CMD under min(SECONDS, time left); skipped when under 20 s are left
limit() {
  local want=$1 left=$((END - SECONDS)); shift
  if [ "$left" -lt 20 ]; then echo "skipped (deadline): $*"; return 124; fi
  timeout -k 10 $((want < left ? want : left)) "$@"  # (KILL 10 s after a TERM ignored)
}
# by priority (a stage cut by its deadline keeps the rows measured): the targets
# first (ERM, every row's baseline; ER S 3 and PGD-AT-10), then fast against eager robust
# accuracy, ERM at 512, the loss curves, the other methods, a second trained pair, and the
# graph-captured evaluation. Each fast stage's first graphs are a cold Inductor compilation
# (tens of seconds); later stages find them in Inductor's on-disk cache.
TARGETS="erm,er:S=3,pgd:steps=10"
REST="er:S=1,pgd:steps=3,trades:steps=10,at,vat"
export TORCH_LOGS=${TORCH_LOGS:-perf_hints}  # (why a graph was skipped or split: in the log)

stamp device
limit 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
limit 60 $PY -c "import torch, numpy, tqdm, yaml, erat.cli; print('torch', torch.__version__, torch.cuda.get_device_name())"
stamp "preflight: a reduce-overhead graph, forward and backward (Triton, C compiler, CUDA graphs)"
limit 60 $PY -c "
import torch
f = torch.compile(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).cuda(), mode='reduce-overhead')
for _ in range(3):
    x = torch.randn(32, 64, device='cuda', requires_grad=True)
    f(x).clone().sum().backward()
torch.cuda.synchronize(); print('preflight ok')" \
  || echo "preflight failed: the fast-path rows and runs below will fail; the eager ones still run"

bench() {  # bench NAME BATCH METHODS SECONDS [FLAGS...]: preact-resnet18, eager then fast
  local name=$1 batch=$2 methods=$3 want=$4; shift 4
  stamp "bench preact-resnet18 $methods, batch $batch, eager fp32 then the fast path"
  limit "$want" $PY -m erat bench --models preact-resnet18:3x32x32 --methods "$methods" \
    --fast off,on --chip --batch-size "$batch" --steps 40 --warmup 5 --max-seconds 3 \
    --no-attacks --device cuda --json "$W/$name.json" "$@"
  pack
}
RUN=(--dataset cifar10 --data-dir "$C10" --model preact-resnet18 --optimizer sgd --lr 0.1
  --momentum 0.9 --weight-decay 5e-4 --schedule step --seed 0 --no-progress --device cuda)
pair() {  # pair NAME METHOD-FLAGS...: trained eager and fast (budget 30), PGD-evaluated eagerly
  local name=$1 fast; shift
  for fast in off on; do
    stamp "train $name fast $fast (budget 30, 500 held out)"
    limit $([ $fast = on ] && echo 120 || echo 60) $PY -m erat train "${RUN[@]}" "$@" \
      --budget 30 --budget-epochs 10 --val 500 --val-eps 0.5 --select best-robust \
      --fast $fast --out "$W/$name-$fast"
    stamp "eval $name fast $fast: PGD-l2 0.5, 50 steps, all 1,017 (eager evaluator)"
    limit 45 $PY -m erat eval "$W/$name-$fast" --device cuda --eps 0.5 --steps 50 \
      --no-checks --fast off --json "$W/$name-$fast-pgd.json"
    pack
  done
}

bench bench-128 128 "$TARGETS" 180 --profile
pair er3 --method er --eps 0.5 --S 3
bench bench-512 512 erm 90
# the same batches both ways (--no-fast-data: the host's generator draws them), so that the
# curves differ by the step alone (graphs, bf16, channels-last)
for fast in off on; do
  stamp "100 updates of ER S 3, fast $fast"
  limit $([ $fast = on ] && echo 90 || echo 45) $PY -m erat train "${RUN[@]}" --method er \
    --eps 0.5 --S 3 --epochs 20 --epoch-updates 5 --fast $fast --no-fast-data \
    --out "$W/curve-$fast"
done
pack
bench bench-128-rest 128 "$REST" 150
pair pgd3 --method pgd --eps 0.5 --steps 3
stamp "eval er3 fast on again, the evaluator as CUDA graphs, twice in one process: the same"
echo "accuracy; the first time with its compilation, the second without"
limit 150 $PY -c "
import sys, time
from erat.cli import main
for i in (1, 2):
    t = time.perf_counter()
    code = main(['eval', sys.argv[1], '--device', 'cuda', '--eps', '0.5', '--steps', '50',
                 '--no-checks', '--fresh', '--json', f'{sys.argv[2]}-{i}.json'])
    print(f'graph-captured eval {i}: exit {code}, {time.perf_counter() - t:.1f} s', flush=True)
" "$W/er3-on" "$W/er3-on-pgd-graphs"
pack
stamp "fallbacks and skips (compiled step failed, Dynamo recompile limit, deadline)"
grep -v "^== " "$OUT/session.log" | grep -E "compiled step failed|recompile_limit|cache_size_limit|without CUDA graphs|cudagraph skips|skipping cudagraphs|Unable to hit fast path|overwritten by a subsequent|skipped \(deadline\)" | sort | uniq -c | head -20
stamp done
exec >&- 2>&-  # (the log's last lines: tee flushes them before the call's files are read)
wait "$TEE"
