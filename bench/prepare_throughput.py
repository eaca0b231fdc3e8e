"""Data preparation at any size: ours against the run_mlm-style path, cached reruns, flat memory.

Usage: python -m bench.prepare_throughput [--corpus NAME[:DOCS] ...] [--num-proc N] [--train-steps 50]
                                          [--no-reference] [--config FILE] [--no-record] [key=value ...]

NAME is imdb, wikipedia or imdb+wikipedia (the shared stand-ins, read in that order); DOCS keeps the first
DOCS documents, written once to a temporary file that both paths read. For each corpus, each step runs
in its own subprocess on the same files and cores (the files are read once first, so both find them in
the page cache):
  1. reference: run_mlm's path — datasets.load_dataset("json") (a cold datasets cache), a WordPiece
     vocabulary trained on the first 10k documents, map(tokenize, batched, num_proc), map(group_texts)
  2. ours, cold: `python -m pretrain.prepare` into an empty cache (clean, split, tokenize, pack, write)
  3. ours, cached: the same command again, which only opens the cache
  4. training: `python -m pretrain` for --train-steps steps on that cache (a small model, same data)
"work s" is timed inside each process around the work (interpreter start and imports excluded);
"process s" is the whole subprocess; "CPU s" is user + system time of all its processes (what a shared
machine's load does not change much); the ratio row is ours / reference for each column. Memory is the peak of the summed Pss_Anon of the process
tree, workers included, sampled every 0.2 s (bench/process_memory.py): no page cache, no mapped files.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

from bench.harness import append_results, machine
from bench.process_memory import Measured, run_measured
from pretrain.config import PretrainConfig
from stagekit.cli import doc_summary
from stagekit.config import REPO_ROOT, load_config

CORPORA = {"imdb": ["imdb_100k.jsonl.gz"], "wikipedia": ["wikipedia_2015.jsonl.gz"]}
CORPORA["imdb+wikipedia"] = CORPORA["imdb"] + CORPORA["wikipedia"]
REFERENCE_TOKENIZER_DOCUMENTS = 10_000
# Training settings for the memory measurement: a small model on the same cache (data, tokenizer and
# vocabulary untouched), so the figure shows what the data cost, on any machine in minutes.
TRAIN_OVERRIDES = [
    "model.hidden_size=128",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "model.intermediate_size=512",
    "train.per_device_train_batch_size=32",
    "train.per_device_eval_batch_size=32",
    "train.max_eval_batches=2",
    "train.warmup_steps=5",
    "train.logging_steps=10",
    "train.max_train_minutes=null",
    "impl.compile=false",
    "impl.precision=fp32",
    "wandb.mode=disabled",
]


def corpus_files(spec: str, folder: Path) -> list[Path]:
    """The files of corpus `spec` (NAME[:DOCS]) in `folder`: links to the shared files, or the first DOCS
    documents written anew (one output file per input file, so each keeps its own columns)."""
    name, _, docs = spec.partition(":")
    if name not in CORPORA:
        raise SystemExit(f"--corpus {spec}: unknown corpus '{name}' (use {', '.join(CORPORA)}, optionally :DOCS)")
    folder.mkdir(parents=True)
    remaining = int(docs) if docs else None
    paths = []
    for file in CORPORA[name]:
        source, path = Path(os.environ["BERT_DATA_DIR"]) / "pretrain" / file, folder / file
        if remaining is None:
            path.symlink_to(source)
        elif remaining > 0:
            with gzip.open(source, "rt", encoding="utf-8") as src, gzip.open(path, "wt", encoding="utf-8") as dst:
                lines = list(itertools.islice(src, remaining))
                dst.writelines(lines)
            remaining -= len(lines)
        else:
            continue
        with open(path, "rb") as fh:  # into the page cache, so that neither path pays the first disk read
            while fh.read(1 << 24):
                pass
        paths.append(path)
    return paths


def run_reference(files: list[str], num_proc: int, vocab_size: int, block_size: int) -> dict:
    """run_mlm.py's preparation (tokenize_function and group_texts as it writes them); counts and seconds."""
    import datasets
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    from pretrain.tokenizer import SPECIAL_TOKENS

    seconds, start = {}, time.perf_counter()
    parts = [datasets.load_dataset("json", data_files=f, split="train").select_columns(["text"]) for f in files]
    raw = datasets.concatenate_datasets(parts)
    seconds["load_dataset (json → Arrow)"] = time.perf_counter() - start
    sample = raw.select(range(min(REFERENCE_TOKENIZER_DOCUMENTS, len(raw))))
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    batches = (sample[i : i + 1000]["text"] for i in range(0, len(sample), 1000))
    wordpiece.train_from_iterator(batches, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, model_max_length=block_size)
    seconds["tokenizer: train on the sample"] = time.perf_counter() - start - sum(seconds.values())

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = len(concatenated[list(examples.keys())[0]]) // block_size * block_size
        return {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}

    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns=["text"])
    seconds["map(tokenize)"] = time.perf_counter() - start - sum(seconds.values())
    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    seconds["map(group_texts)"] = time.perf_counter() - start - sum(seconds.values())
    seconds["total"] = time.perf_counter() - start
    tokens = len(grouped) * block_size
    return {"wall_s": seconds["total"], "documents": len(raw), "tokens": tokens, "seconds": seconds}


def child(command: list[str], env: dict[str, str] | None = None) -> tuple[dict, Measured]:
    """Run `python <command>`: the JSON it prints, and its measurements."""
    measured = run_measured([sys.executable, *command], REPO_ROOT, env)
    return json.loads(measured.stdout[measured.stdout.index("{") :]), measured


def measure(spec: str, args: argparse.Namespace, work: Path) -> dict:
    """All steps for one corpus: {"reference", "cold", "cached": (child JSON, Measured), "train": Measured}."""
    files = corpus_files(spec, work / "corpus")
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    ours = ["--config", args.config, *args.overrides, f"data.source={work / 'corpus'}"]
    ours += ["data.max_documents=null"]
    ours += [f"data.num_proc={args.num_proc}", f"data.cache_dir={work / 'cache'}"]
    result: dict = {"corpus": spec}
    if args.reference:
        command = ["-m", "bench.prepare_throughput", "--reference-child", json.dumps([str(f) for f in files])]
        command += [str(args.num_proc), str(cfg.model.vocab_size), str(cfg.data.block_size)]
        result["reference"] = child(command, {"HF_DATASETS_CACHE": str(work / "hf-datasets")})  # a cold cache
    result["cold"] = child(["-m", "pretrain.prepare", *ours])
    result["cached"] = child(["-m", "pretrain.prepare", *ours])
    if args.train_steps:
        result["train"] = measure_training(ours, args.train_steps, work / "runs")
    return result


def measure_training(prepare_args: list[str], steps: int, output_dir: Path) -> Measured:
    """Memory and time of `python -m pretrain` for the first `steps` steps on the cache `prepare_args` built."""
    command = ["-m", "pretrain", *prepare_args, *TRAIN_OVERRIDES, f"train.max_steps={steps}"]
    command += [f"train.eval_steps={steps}", f"train.save_steps={steps}", f"output_dir={output_dir}", "run_name=bench"]
    measured = run_measured([sys.executable, *command], REPO_ROOT)
    done = json.loads((output_dir / "bench" / "metrics.json").read_text())["step"]
    assert done == steps, f"training ran {done} steps, not {steps}"
    return measured


def speed_row(corpus: str, path: str, docs: int, tokens: int, work_s: float, m: Measured) -> str:
    return (
        f"| {corpus} | {path} | {docs:,} | {tokens / 1e6:.1f}M | {work_s:.1f} | {docs / work_s:,.0f} | "
        f"{tokens / work_s / 1e3:,.0f}k | {m.cpu_s:.1f} | {m.wall_s:.1f} | {m.peak.tree_mib:,.0f} |"
    )


def stage_row(corpus: str, path: str, seconds: dict[str, float]) -> str:
    return f"| {corpus} | {path} | " + "; ".join(f"{stage} {s:.1f}" for stage, s in seconds.items()) + " |"


def report(results: list[dict], args: argparse.Namespace, argv: list[str]) -> None:
    """Print the three tables (speed, memory, stages) and append them to docs/benchmarks.md."""
    speed, memory, stages, peaks = [], [], [], {"preparation": [], "training": []}
    for r in results:
        corpus, (cold, cold_m) = r["corpus"], r["cold"]
        docs = cold["stats"]["documents_read"]
        tokens = cold["stats"]["train_tokens"] + cold["stats"]["validation_tokens"]
        if "reference" in r:
            ref, ref_m = r["reference"]
            speed.append(speed_row(corpus, "run_mlm-style", ref["documents"], ref["tokens"], ref["wall_s"], ref_m))
            stages.append(stage_row(corpus, "run_mlm-style", ref["seconds"]))
        speed.append(speed_row(corpus, "ours, cold", docs, tokens, cold["wall_s"], cold_m))
        stages.append(stage_row(corpus, "ours", cold["seconds"]))
        cached, cached_m = r["cached"]
        speed.append(
            f"| {corpus} | ours, cached | | | {cached['wall_s']:.2f} | | | {cached_m.cpu_s:.1f} | "
            f"{cached_m.wall_s:.1f} | {cached_m.peak.tree_mib:,.0f} |"
        )
        if "reference" in r:
            docs_ratio = (docs / cold["wall_s"]) / (ref["documents"] / ref["wall_s"])
            tokens_ratio = (tokens / cold["wall_s"]) / (ref["tokens"] / ref["wall_s"])
            cpu_ratio = cold_m.cpu_s / ref_m.cpu_s
            speed.append(
                f"| {corpus} | **ours / reference** | | | | **{docs_ratio:.2f}×** | **{tokens_ratio:.2f}×** | "
                f"{cpu_ratio:.2f}× | | |"
            )
        peaks["preparation"].append(cold_m.peak.tree_mib)
        train = "–"
        if "train" in r:
            peaks["training"].append(r["train"].peak.tree_mib)
            train = f"{r['train'].peak.tree_mib:,.0f}"
        memory.append(
            f"| {corpus} | {docs:,} | {tokens / 1e6:.1f}M | {cold_m.peak.tree_mib:,.0f} | "
            f"{cold_m.peak.main_mib:,.0f} | {train} |"
        )
    spread = ", ".join(f"{k} max/min {max(v) / min(v):.2f}" for k, v in peaks.items() if v)
    print(machine(), *speed, "", *memory, spread, "", *stages, sep="\n")
    if args.no_record:
        return
    command = "python -m bench.prepare_throughput " + " ".join(argv)
    setup = f"num_proc {args.num_proc}, {os.cpu_count()} cores, load average {args.load:.1f} at the start"
    header = "| corpus | path | documents | tokens | work s | docs/s | tokens/s | CPU s | process s | peak anon MiB |"
    append_results(f"Data preparation, ours vs run_mlm-style ({setup})", command, speed, header)
    steps = f"first {args.train_steps} training steps"
    header = f"| corpus | documents | tokens | preparation, all processes | main process | {steps} |"
    append_results(f"Data preparation memory, peak Pss_Anon MiB ({spread}; {setup})", command, memory, header)
    title = f"Where preparation time goes (seconds; our worker stages summed over workers; {setup})"
    append_results(title, command, stages, "| corpus | path | stages |")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--reference-child":  # a child: one reference run, JSON on stdout
        files, num_proc, vocab, block = json.loads(argv[1]), *map(int, argv[2:5])
        print(json.dumps(run_reference(files, num_proc, vocab, block)))
        return
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--config", default="configs/pretrain/bert-medium.yaml", help="data + tokenizer settings")
    parser.add_argument("--corpus", action="append", help="NAME[:DOCS], repeatable (default imdb:20000)")
    parser.add_argument("--num-proc", type=int, default=min(8, os.cpu_count() or 1), help="processes, both paths")
    parser.add_argument("--train-steps", type=int, default=50, help="training steps measured (0: none)")
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="only our path")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="pretrain config overrides")
    args = parser.parse_args(argv)
    load_config(PretrainConfig, args.config, args.overrides)  # a bad override fails before any work
    args.load = os.getloadavg()[0]  # other jobs on the machine slow both paths: recorded with the results
    work = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    try:
        results = [measure(spec, args, work / str(i)) for i, spec in enumerate(args.corpus or ["imdb:20000"])]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args, argv)


if __name__ == "__main__":
    main()
