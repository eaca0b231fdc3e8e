#!/usr/bin/env bash
# Run on a machine with pip and the shared data, before bench/gpu/mission.sh runs on a GPU machine without
# network access: fills the git-ignored folders that travel there with the working tree, and checks that
# tree and folders together fit the 64 MiB such a machine accepts.
#   .gpu-data/  the data the mission reads: the IMDB stand-in (xz, decompressed on the GPU machine: as gzip it
#               alone is 48.5 MiB), the MNLI subset and dev sets, STS-B validation and test
#   .whl/       wheels the GPU machine's image lacks or has older: datasets and its dill / multiprocess, and
#               the transformers / sentence-transformers versions the project is tested with
#
#   bash bench/gpu/carry.sh     # then, on the GPU machine, with .gpu-data/ and .whl/ beside the tree:
#                               #   bash bench/gpu/mission.sh
set -euo pipefail

DATA=${BERT_DATA_DIR:-../shared/data}
WHEELS=${WHEELS:-"datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0 sentence-transformers==6.2.0"}
LIMIT_MIB=64

mkdir -p .gpu-data/pretrain .gpu-data/mnli .gpu-data/stsb .whl
for f in mnli/train.jsonl.gz mnli/validation_matched.jsonl.gz mnli/validation_mismatched.jsonl.gz \
    stsb/validation.jsonl.gz stsb/test.jsonl.gz; do
    cp -u "$DATA/$f" ".gpu-data/$f"
done
if [ ! -s .gpu-data/pretrain/imdb_100k.jsonl.xz ]; then  # a few minutes on one core
    zcat "$DATA/pretrain/imdb_100k.jsonl.gz" | xz -6 -T1 > .gpu-data/pretrain/imdb_100k.jsonl.xz.part
    mv .gpu-data/pretrain/imdb_100k.jsonl.xz.part .gpu-data/pretrain/imdb_100k.jsonl.xz
fi
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $WHEELS

# What travels: tracked and untracked-not-ignored files, plus the two carried folders.
tree=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 cat 2>/dev/null | wc -c; } )
carried=$(du -sb .gpu-data .whl | awk '{s += $1} END {print s}')
total=$((tree + carried))
echo "working tree $((tree / 1024)) KiB + .gpu-data and .whl $((carried / 1024)) KiB = $((total / 1048576)) MiB (limit $LIMIT_MIB MiB)"
ls -la .gpu-data/* .whl
[ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "too large to carry: drop a wheel from WHEELS" >&2; exit 1; }
