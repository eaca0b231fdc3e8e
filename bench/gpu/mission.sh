#!/usr/bin/env bash
# The GPU check on a bare GPU machine that runs one command of at most 10 minutes: install the carried
# wheels, decompress the carried IMDB stand-in, then bench/gpu/check.sh with a total budget —
# throughput of ours vs the reference path and the bare-loop anchor with the step profile, the data path per
# loader worker, bert-medium pretraining for whatever those leave of MISSION_SECONDS, the siamese stage and
# the evaluation. Everything small comes back in $OUT/gpu-check.tgz, refreshed after each step.
#
#   with network, once:  bash bench/gpu/carry.sh     (fills .gpu-data/ and .whl/, which go with the tree)
#   on the GPU machine:  bash bench/gpu/mission.sh   (within a 600 s limit)
#   CPU dry run:         DRY=1 bash bench/gpu/mission.sh   (the debug configs, tiny steps; a few minutes)
#
# MISSION_SECONDS (default 560) is the whole script's budget inside the command's 600 s: the install and
# decompression, the bench steps (limits 270 + 60 s), then pretraining gets the rest less
# check.sh's RESERVE_SECONDS for what follows it (at least MIN_PRETRAIN_MINUTES, default 1.5: the
# 2026-11-30 run left the unigram plateau only after ~1,500 steps). SKIP_BENCH=1 gives pretraining
# the bench's time too (about 5 minutes then); SIAMESE_MINUTES defaults to 1 here.
set -u -o pipefail

START=$SECONDS
DRY=${DRY:-0}
export MISSION_SECONDS=${MISSION_SECONDS:-$([ "$DRY" = 1 ] && echo 240 || echo 560)}
export SIAMESE_MINUTES=${SIAMESE_MINUTES:-$([ "$DRY" = 1 ] && echo 0.3 || echo 1)}
CARRIED=${CARRIED_DATA:-.gpu-data}

if [ "$DRY" = 1 ]; then  # the wheels are for the device's Python 3.12; here the environment has the packages
    echo "== DRY: .whl/ not installed"
elif compgen -G ".whl/*.whl" > /dev/null; then
    install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
    imports() { PYTHONPATH=/tmp/site python3 -c 'import datasets, transformers, sentence_transformers, pretrain.train, siamese.train'; }
    install .whl/*.whl || exit 1
    if ! imports; then  # e.g. a dependency of the newer transformers too old on the image: keep the image's
        echo "== the carried transformers / sentence-transformers do not import here: using the image's"
        rm -rf /tmp/site
        install $(ls .whl/*.whl | grep -v -e transformers- -e sentence_transformers-) || exit 1
        imports || exit 1
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ -d "$CARRIED" ]; then
    export BERT_DATA_DIR=$CARRIED
    XZ=$CARRIED/pretrain/imdb_100k.jsonl.xz
    if [ -s "$XZ" ]; then  # plain JSON lines, which pretrain reads like the .gz
        mkdir -p /tmp/mission-data
        [ -s /tmp/mission-data/imdb_100k.jsonl ] || python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 24)' "$XZ" /tmp/mission-data/imdb_100k.jsonl || exit 1
        export CORPUS=/tmp/mission-data/imdb_100k.jsonl
    fi
fi
echo "== mission setup: $((SECONDS - START)) s; data ${BERT_DATA_DIR:-../shared/data}, corpus ${CORPUS:-the default of check.sh}"

# check.sh counts its own time from its start: give it what setup left.
MISSION_SECONDS=$((MISSION_SECONDS - (SECONDS - START))) exec bash bench/gpu/check.sh
