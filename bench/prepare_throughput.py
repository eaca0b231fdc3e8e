"""Data preparation speed: clean + train the tokenizer + tokenize + pack, cold and from the cache.

Usage: python -m bench.prepare_throughput [--config FILE] [key=value ...]
The default reads all 100k documents of the shared IMDB stand-in with the bert-medium tokenizer settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from bench.harness import append_results, machine
from common.config import load_config
from pretrain.blocks import prepare_data
from pretrain.config import PretrainConfig

DEFAULT_OVERRIDES = ["data.source=${BERT_DATA_DIR}/pretrain/imdb_100k.jsonl.gz", "data.max_documents=100000"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pretrain/bert-medium.yaml")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="prepare-bench-")
    cfg = load_config(PretrainConfig, args.config, DEFAULT_OVERRIDES + args.overrides + [f"data.cache_dir={cache}"])
    try:
        timings = {}
        for run in ("cold", "cached"):
            start = time.perf_counter()
            data = prepare_data(cfg)
            timings[run] = time.perf_counter() - start
        stats = data.stats
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    docs = stats["documents_read"]
    tokens = stats["train_tokens"] + data.validation.numel()
    result = {
        "documents": docs,
        "tokens": tokens,
        "cold_s": timings["cold"],
        "cached_s": timings["cached"],
        "cold_docs_per_s": docs / timings["cold"],
        "cold_tokens_per_s": tokens / timings["cold"],
        "num_proc": cfg.data.num_proc,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    print(
        f"{docs:,} documents, {tokens / 1e6:.1f}M tokens: cold {timings['cold']:.1f} s "
        f"({result['cold_docs_per_s']:,.0f} docs/s, {result['cold_tokens_per_s'] / 1e6:.2f}M tokens/s), "
        f"cached {timings['cached']:.1f} s; {machine()}"
    )
    if not args.no_record:
        row = (
            f"| {docs:,} | {tokens / 1e6:.1f}M | {cfg.data.num_proc} | {timings['cold']:.1f} | "
            f"{result['cold_docs_per_s']:,.0f} | {result['cold_tokens_per_s'] / 1e6:.2f}M | {timings['cached']:.1f} |"
        )
        command = "python -m bench.prepare_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
        header = "| documents | tokens | num_proc | cold s | docs/s | tokens/s | cached s |"
        append_results("Data preparation", command, [row], header)


if __name__ == "__main__":
    main()
