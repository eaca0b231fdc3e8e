#!/usr/bin/env bash
# The GPU check in one command: bert-medium pretraining throughput against the reference path
# (bench/pretrain_throughput.py), a few minutes of bert-medium pretraining on the offline IMDB stand-in
# (the loss curve), the siamese stage on its model and the evaluation — what docs/benchmarks.md records
# under "GPU check".
#
#   bash bench/gpu_check.sh                  # data from ${BERT_DATA_DIR:-../shared/data}
#   PRETRAIN_MINUTES=10 bash bench/gpu_check.sh
#
# Runs, logs and reports go under ${CHECK_DIR:-outputs/gpu-check}; if ${OUT} is set, a tarball of everything
# small (logs, metrics, reports, plots; no weights) is refreshed there after each step, so a run stopped
# half-way still leaves what it measured. Extra config overrides for both training stages (a CPU dry run,
# say) come in PRETRAIN_OVERRIDES / SIAMESE_OVERRIDES, evaluation options in EVALUATE_ARGS.
set -u -o pipefail

DATA=${BERT_DATA_DIR:-../shared/data}
CHECK=${CHECK_DIR:-outputs/gpu-check}
MINUTES=${PRETRAIN_MINUTES:-3}
SIAMESE_MINUTES=${SIAMESE_MINUTES:-1.5}
CORPUS=${CORPUS:-$DATA/pretrain/imdb_100k.jsonl.gz}  # any JSON-lines file with a "text" column
export BERT_DATA_DIR=$DATA PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TQDM_MININTERVAL=20
mkdir -p "$CHECK"

pack() {  # everything under 5 MB except weights and optimizer states
    [ -n "${OUT:-}" ] || return 0
    (cd "$CHECK" && find . -type f -size -5M ! -name '*.safetensors' ! -name '*.pt' ! -name '*.bin' \
        ! -name '*.arrow' ! -name '*.npy' -print0 | tar czf "$OUT/gpu-check.tgz" --null -T -)
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, pack
    local name=$1 limit=$2
    shift 2
    echo "== $(date -u +%H:%M:%S) $name: $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$CHECK/$name.log"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$CHECK/steps.txt"
    pack
    return $rc
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, transformers, sentence_transformers, datasets, pyarrow
print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| sentence-transformers", sentence_transformers.__version__, "| datasets", datasets.__version__,
      "| pyarrow", pyarrow.__version__)'; } 2>&1 | tee "$CHECK/machine.txt"

# 1. Tokens/s of `python -m pretrain`'s Trainer (bf16, SDPA, compile, masked-only head) vs the reference path.
cp docs/benchmarks.md "$CHECK/benchmarks-before.md"
step throughput 150 python3 -m bench.pretrain_throughput --config configs/pretrain/bert-medium.yaml \
    --warmup 5 --windows 3 --steps-per-window 10 data.source="$CORPUS" ${PRETRAIN_OVERRIDES:-}
diff docs/benchmarks.md "$CHECK/benchmarks-before.md" | sed -n 's/^< //p' > "$CHECK/benchmarks-added.md"

# 2. bert-medium on the IMDB stand-in for a few minutes: the loss curve, cloze, attention entropy.
PRE=$CHECK/pretrain-bert-medium
step pretrain "$(awk "BEGIN {print int($MINUTES * 60 + 150)}")" python3 -m pretrain --config configs/pretrain/bert-medium.yaml \
    output_dir="$CHECK" data.source="$CORPUS" data.revision=null \
    train.max_train_minutes="$MINUTES" train.eval_steps=250 train.save_steps=1000 ${PRETRAIN_OVERRIDES:-}
step fill-mask 60 python3 -m pretrain.fill_mask --model "$PRE/model" \
    "the movie was [MASK] and i loved every minute of it." \
    "the [MASK] of the film is set in new york." \
    "i would not [MASK] this film to anyone." \
    "the actors did a great [MASK] with a weak script." \
    "this is one of the worst [MASK] i have ever seen."

# 3. The siamese stage on that model (the MNLI subset), then the evaluation.
SIA=$CHECK/siamese-bert-medium
step siamese "$(awk "BEGIN {print int($SIAMESE_MINUTES * 60 + 180)}")" python3 -m siamese --config configs/siamese/bert-medium.yaml \
    output_dir="$CHECK" model.base_model="$PRE/model" \
    "data.train_sources=[{path: $DATA/mnli/train.jsonl.gz, config_name: null}]" \
    "data.eval_sources=[{path: $DATA/mnli/validation_matched.jsonl.gz, config_name: null}]" \
    train.max_train_minutes="$SIAMESE_MINUTES" train.max_steps=460 train.eval_steps=100 train.save_steps=100 \
    ${SIAMESE_OVERRIDES:-}
step evaluate 120 python3 -m siamese.evaluate --model "$SIA/model" ${EVALUATE_ARGS:-}
cat "$CHECK/steps.txt"
