#!/bin/bash
# The run-folder faults of docs/faults.md (its first section), tried for real: prints each command, its exit code and its lines.
# Needs root for the tmpfs rows (mount). Usage: scripts/try_run_faults.sh [WORKDIR]  (~8 min on 2 CPU cores)
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
D=${1:-/tmp/fdemo}; RUN=$D/run; mkdir -p $D
DISTILL=${DISTILL:-distill}
rm -rf $RUN $D/cache; umount -l $D/disk 2>/dev/null; rm -rf $D/disk
cat > $D/run.yaml <<Y
teacher: tiny-wan
recipe: {name: consistency, skip: 5, sampler: {steps: 2}}
data: {size: 8, batch_size: 2, cache_dir: $D/cache}
deepspeed: zero2
train: {steps: 6, log_every: 1, checkpoint_every: 3, validation_prompts: [a red circle]}
wandb: {mode: disabled}
out: $RUN
Y
try() { echo "### $*"; "$@" > $D/out.txt 2> $D/err.txt; echo "exit $?"; grep -E "^distill|^done" $D/err.txt $D/out.txt | sed 's/^[^:]*txt://'; }
try $DISTILL train $D/run.yaml --no-progress
try $DISTILL train $D/run.yaml --no-progress
rm $RUN/checkpoints/latest; echo "### (rm checkpoints/latest)"
try $DISTILL train $D/run.yaml --no-progress
truncate -s 100 $RUN/checkpoints/step-000006/engines/student/zero_pp_rank_0_mp_rank_00_optim_states.pt; echo "### (truncate step-000006's optimizer state to 100 bytes)"
try $DISTILL train $D/run.yaml --no-progress --resume $RUN/checkpoints/step-000006
try $DISTILL train $D/run.yaml --no-progress --resume latest
cat $RUN/checkpoints/latest; wc -l < $RUN/metrics.jsonl; wc -l < $RUN/metrics.superseded.jsonl 2>/dev/null
# a second job while one runs, then the first killed with -9
setsid $DISTILL train $D/run.yaml --no-progress --resume latest train.steps=60 > $D/bg.out 2> $D/bg.err &
BG=$!
for i in $(seq 600); do [ -s $RUN/.lock ] && grep -q "step\": 8" $RUN/metrics.jsonl 2>/dev/null && break; sleep 0.2; done
try $DISTILL train $D/run.yaml --no-progress --resume latest train.steps=60
kill -9 -$BG; wait $BG 2>/dev/null; echo "### (kill -9 the first job); lock file: $(cat $RUN/.lock)"
ls -a $RUN/checkpoints
L=$(cat $RUN/checkpoints/latest); N=$((10#${L#step-} + 1))
try $DISTILL train $D/run.yaml --no-progress --resume latest train.steps=$N
# SIGTERM to a single-process run
setsid $DISTILL train $D/run.yaml --no-progress --resume latest train.steps=60 > $D/bg.out 2> $D/bg.err &
BG=$!
for i in $(seq 600); do grep -q "step\": $((N + 2))" $RUN/metrics.jsonl 2>/dev/null && break; sleep 0.2; done
kill -TERM $BG; wait $BG; echo "### (SIGTERM to a single-process run) exit $?"; grep -E "^distill" $D/bg.err
echo "lock after: '$(cat $RUN/.lock)'"; ls -a $RUN/checkpoints
# a full disk at the second checkpoint
mkdir -p $D/disk && mount -t tmpfs -o size=30m tmpfs $D/disk
sed "s#out: $RUN#out: $D/disk/run#; s#checkpoint_every: 3#checkpoint_every: 3, keep_checkpoints: 1#" $D/run.yaml > $D/disk.yaml
try $DISTILL train $D/disk.yaml --no-progress
ls -a $D/disk/run/checkpoints; df -h $D/disk | tail -1
mount -o remount,size=64m $D/disk; echo "### (remount 64m)"
try $DISTILL train $D/disk.yaml --no-progress --resume latest
umount -l $D/disk
# a full disk inside DeepSpeed's own write: the first checkpoint does not fit
mkdir -p $D/disk2 && mount -t tmpfs -o size=12m tmpfs $D/disk2
sed "s#out: $RUN#out: $D/disk2/run#" $D/run.yaml > $D/disk2.yaml
try $DISTILL train $D/disk2.yaml --no-progress
ls -a $D/disk2/run/checkpoints
umount -l $D/disk2
