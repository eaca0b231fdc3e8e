"""Build a tiny trained siamese NLI model (the tiny BERT of tests/tiny_bert.py, L2/H64) in seconds on CPU.

The app tests, the browser test and the latency benchmark's smoke run all need a real model folder
in the layout the siamese stage writes: a SentenceTransformer + NLI head + run_info.json + report.json.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path

import torch

from siamese.inference.encoder import LABELS, save_head
from tests.tiny_bert import make_tiny_bert

MAX_SEQ_LENGTH = 32  # short, so a long input shows the truncation notice


def read_pairs(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, n)]


def build_tiny_model(data_dir: Path, outputs_root: Path, run_name: str = "tiny", steps: int = 40) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    random.seed(0)
    pairs = read_pairs(data_dir / "mnli" / "train.jsonl.gz", 400)
    # Seeds torch too: the pooling, the NLI head and the steps below start from the generator it leaves.
    work = make_tiny_bert(outputs_root / run_name / "backbone", data_dir, positions=64, max_length=MAX_SEQ_LENGTH)

    model = SentenceTransformer(
        modules=[Transformer(str(work), max_seq_length=MAX_SEQ_LENGTH), Pooling(64, pooling_mode="mean")],
        device="cpu",
    )
    loss = SoftmaxLoss(model, model.get_embedding_dimension(), num_labels=len(LABELS))
    optimizer = torch.optim.AdamW(loss.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        batch = random.sample(pairs, 16)
        features = [model.preprocess([p["premise"] for p in batch]), model.preprocess([p["hypothesis"] for p in batch])]
        labels = torch.tensor([p["label"] for p in batch])
        optimizer.zero_grad()
        loss(features, labels).backward()
        optimizer.step()

    model_dir = outputs_root / run_name / "model"
    model.save(str(model_dir))
    save_head(loss.classifier, model_dir)
    (model_dir / "run_info.json").write_text(json.dumps({"base_model": str(work), "steps": steps}))
    report = {
        "model": str(model_dir),
        "mnli_validation_matched": {"accuracy": 0.41, "n": 200},
        "mnli_validation_mismatched": {"accuracy": 0.40, "n": 200},
        "stsb_test": {"spearman": 0.12, "pearson": 0.11, "n": 100},
        "baseline": None,
    }
    (model_dir / "report.json").write_text(json.dumps(report, indent=2))
    return model_dir
