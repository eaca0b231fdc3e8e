#!/usr/bin/env bash
# The GPU check in one command: bert-medium pretraining throughput of our path against the reference path
# and the bare-loop anchor with a profile of our step (bench/pretrain_throughput.py), the data path per loader
# worker (bench/step_overhead.py --loader-only), bert-medium pretraining on the offline IMDB stand-in (the
# loss curve), the siamese stage on its model and the evaluation — what docs/benchmarks.md records under
# "GPU check". bench/gpu/mission.sh sets up a bare GPU machine (wheels, data) and calls this with a
# total time budget.
#
#   bash bench/gpu/check.sh                  # data from ${BERT_DATA_DIR:-../shared/data}
#   PRETRAIN_MINUTES=10 bash bench/gpu/check.sh
#   MISSION_SECONDS=540 bash bench/gpu/check.sh   # pretraining gets what the other steps leave of 540 s
#   DRY=1 bash bench/gpu/check.sh            # the same steps on a CPU with the debug configs, in minutes
#
# Runs, logs and reports go under ${CHECK_DIR:-outputs/gpu-check}; if ${OUT} is set, a tarball of everything
# small (logs, metrics, reports, plots; no weights) is refreshed there after each step, so a run stopped
# half-way still leaves what it measured. Extra config overrides for both training stages come in
# PRETRAIN_OVERRIDES / SIAMESE_OVERRIDES, evaluation options in EVALUATE_ARGS. SKIP_BENCH=1 leaves out the
# throughput, profile and data-path steps.
set -u -o pipefail

DATA=${BERT_DATA_DIR:-../shared/data}
CHECK=${CHECK_DIR:-outputs/gpu-check}
DRY=${DRY:-0}
SIAMESE_MINUTES=${SIAMESE_MINUTES:-$([ "$DRY" = 1 ] && echo 0.3 || echo 1.5)}
CORPUS=${CORPUS:-$DATA/pretrain/imdb_100k.jsonl.gz}  # any JSON-lines file with a "text" column
export BERT_DATA_DIR=$DATA PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TQDM_MININTERVAL=20
mkdir -p "$CHECK"
START=$SECONDS

if [ "$DRY" = 1 ]; then  # a CPU rehearsal: tiny models, a few steps, nothing appended to docs/benchmarks.md
    PRE_CONFIG=configs/pretrain/debug.yaml SIA_CONFIG=configs/siamese/debug.yaml
    BENCH=(--warmup 1 --windows 1 --steps-per-window 2 --profile-after 2 --no-record impl.num_threads=1)
    LOADER=(--loader-seconds 1 --no-record)
    PRE_STEPS=(train.eval_steps=10 train.save_steps=20 impl.num_threads=1)
    SIA_STEPS=(train.max_steps=6 train.eval_steps=3 train.save_steps=3 impl.num_threads=1)
    MINUTES=${PRETRAIN_MINUTES:-0.3}
    EVALUATE_LIMIT=(limit=64)
    export OMP_NUM_THREADS=1
else
    PRE_CONFIG=configs/pretrain/bert-medium.yaml SIA_CONFIG=configs/siamese/bert-medium.yaml
    BENCH=(--warmup 5 --windows 3 --steps-per-window 10 --profile-after 10)
    LOADER=(--loader-seconds 5)
    PRE_STEPS=(train.eval_steps=250 train.save_steps=1000)
    SIA_STEPS=(train.max_steps=460 train.eval_steps=100 train.save_steps=100)
    MINUTES=${PRETRAIN_MINUTES:-3}
    EVALUATE_LIMIT=()
fi
# Seconds the steps after pretraining's training loop take (data preparation, compile, final evaluation,
# cloze and export of the pretraining command; fill-mask; the siamese command; evaluation): from the
# 2026-11-30 H200 check in docs/benchmarks.md (212 s command for a 2-minute budget, 72 s siamese for 1 minute,
# 29 s evaluation), rounded up.
RESERVE_SECONDS=${RESERVE_SECONDS:-$(awk "BEGIN {print int(100 + 20 + ($SIAMESE_MINUTES * 60 + 20) + 40)}")}

pack() {  # everything under 5 MB except weights and optimizer states
    [ -n "${OUT:-}" ] || return 0
    (cd "$CHECK" && find . -type f -size -5M ! -name '*.safetensors' ! -name '*.pt' ! -name '*.bin' \
        ! -name '*.arrow' ! -name '*.npy' -print0 | tar czf "$OUT/gpu-check.tgz" --null -T -)
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, pack
    local name=$1 limit=$2
    shift 2
    echo "== $(date -u +%H:%M:%S) $name (limit ${limit}s, ${SECONDS}s into the check): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$CHECK/$name.log"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$CHECK/steps.txt"
    pack
    return $rc
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU (DRY=$DRY)"
  echo "$(nproc) CPU cores"
  python3 -c 'import torch, transformers, sentence_transformers, datasets, pyarrow
print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| sentence-transformers", sentence_transformers.__version__, "| datasets", datasets.__version__,
      "| pyarrow", pyarrow.__version__)'; } 2>&1 | tee "$CHECK/machine.txt"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    # 1. Tokens/s of `python -m pretrain`'s Trainer (bf16, SDPA, compile, masked-only head) vs the reference
    #    path and the bare-loop anchor, MFU of each, and where a step of ours spends its time (profiled after
    #    its timed windows, in the same process); then the data path per loader worker.
    cp docs/benchmarks.md "$CHECK/benchmarks-before.md"
    step throughput 270 python3 -m bench.pretrain_throughput --config "$PRE_CONFIG" "${BENCH[@]}" \
        data.source="$CORPUS" ${PRETRAIN_OVERRIDES:-}
    step loader 60 python3 -m bench.step_overhead --config "$PRE_CONFIG" --loader-only "${LOADER[@]}" \
        data.source="$CORPUS" ${PRETRAIN_OVERRIDES:-}
    diff docs/benchmarks.md "$CHECK/benchmarks-before.md" | sed -n 's/^< //p' > "$CHECK/benchmarks-added.md"
    pack
fi

# 2. bert-medium on the IMDB stand-in: the loss curve, cloze, attention entropy. With MISSION_SECONDS the
#    training budget is what is left of it after the steps so far and RESERVE_SECONDS for the rest.
if [ -n "${MISSION_SECONDS:-}" ]; then
    FLOOR=${MIN_PRETRAIN_MINUTES:-$([ "$DRY" = 1 ] && echo 0.3 || echo 1.5)}  # below ~1,500 steps BERT sits on the unigram plateau
    MINUTES=$(awk "BEGIN {m = ($MISSION_SECONDS - ($SECONDS - $START) - $RESERVE_SECONDS) / 60; print (m < $FLOOR ? $FLOOR : m)}")
    echo "== pretraining budget: $MINUTES min (${MISSION_SECONDS}s mission, $((SECONDS - START))s spent, ${RESERVE_SECONDS}s reserved)" \
        | tee -a "$CHECK/steps.txt"
fi
PRE=$CHECK/mission-pretrain
step pretrain "$(awk "BEGIN {print int($MINUTES * 60 + 150)}")" python3 -m pretrain --config "$PRE_CONFIG" \
    output_dir="$CHECK" run_name=mission-pretrain data.source="$CORPUS" \
    train.max_train_minutes="$MINUTES" "${PRE_STEPS[@]}" ${PRETRAIN_OVERRIDES:-}
step fill-mask 60 python3 -m pretrain.fill_mask --model "$PRE/model" \
    "the movie was [MASK] and i loved every minute of it." \
    "the [MASK] of the film is set in new york." \
    "i would not [MASK] this film to anyone." \
    "the actors did a great [MASK] with a weak script." \
    "this is one of the worst [MASK] i have ever seen."

# 3. The siamese stage on that model (the MNLI subset; STS-B validation selects the post-processing), then
#    the evaluation.
SIA=$CHECK/mission-siamese
step siamese "$(awk "BEGIN {print int($SIAMESE_MINUTES * 60 + 180)}")" python3 -m siamese --config "$SIA_CONFIG" \
    output_dir="$CHECK" run_name=mission-siamese model.base_model="$PRE/model" \
    "data.train_sources=[$DATA/mnli/train.jsonl.gz]" "data.eval_sources=[$DATA/mnli/validation_matched.jsonl.gz]" \
    postprocess.selection_source="$DATA/stsb/validation.jsonl.gz" \
    train.max_train_minutes="$SIAMESE_MINUTES" "${SIA_STEPS[@]}" ${SIAMESE_OVERRIDES:-}
step evaluate 120 python3 -m siamese.evaluation --model "$SIA/model" "${EVALUATE_LIMIT[@]}" ${EVALUATE_ARGS:-}
echo "== the check took $((SECONDS - START)) s" | tee -a "$CHECK/steps.txt"
cat "$CHECK/steps.txt"
pack
