"""The pretraining output's model card (README.md): what the folder holds, how it was trained, what it reached.

Rendered from the folder alone — config.json, resolved_config.yaml and metrics.json, which pretrain/export.py
writes first — so `python -m pretrain.card MODEL_DIR` gives an older folder a card too. The shared layout and the
Hub front matter are stagekit/model_card.py's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from stagekit.errors import UserError
from stagekit.model_card import (
    PROJECT_TAG,
    Card,
    dataset_id,
    duration,
    metadata,
    model_reference,
    number,
    percent,
    read_mapping,
    replaceable,
    source_words,
    table,
    warmup_words,
    write_card,
)

CLASSES = {"bert": "BertForMaskedLM", "nomic_bert": "NomicBertForMaskedLM", "modernbert": "ModernBertForMaskedLM"}
POSITIONS = {
    "bert": "learned absolute positions",
    "nomic_bert": "rotary positions (RoPE), BERT's post-LayerNorm layout, gated (SwiGLU) feed-forward",
    "modernbert": "rotary positions (RoPE), pre-LayerNorm, gated feed-forward",
}
# Devlin et al. 2019, section A.2: 1M steps of 256 sequences × 512 tokens (128,000 tokens a batch).
BERT_TOKENS = 128e9


def write_model_card(folder: str | Path, final: str | Path | None = None) -> Path:
    """Write `folder`/README.md for the pretraining output in `folder` (`final`: where it will live, when `folder`
    is the temporary folder stagekit/stage.py fills). The hardware comes from run_info.json; a folder written
    before it recorded one says the hardware is not recorded."""
    folder = Path(folder)
    hardware = read_mapping(folder / "run_info.json").get("hardware")
    return write_card(folder, pretrain_card(folder, hardware, final))


def pretrain_card(folder: Path, hardware: str | None = None, final: str | Path | None = None) -> Card:
    config, metrics = read_mapping(folder / "config.json"), read_mapping(folder / "metrics.json")
    resolved = read_mapping(folder / "resolved_config.yaml")
    data, model, train = resolved.get("data", {}), resolved.get("model", {}), resolved.get("train", {})
    tokenizer = resolved.get("tokenizer", {})
    if isinstance(data.get("source"), dict):  # a section (stagekit.sources.SourceConfig); older folders: its path
        data = data | {"source": data["source"].get("path")}
    arch = model.get("architecture") or config.get("model_type", "bert")
    run_name = resolved.get("run_name") or folder.parent.name
    corpus = dataset_id(data.get("source"))
    shape = (
        f"L{config.get('num_hidden_layers')}/H{config.get('hidden_size')}/A{config.get('num_attention_heads')}"
        f"/FFN{config.get('intermediate_size')}"
    )
    params = metrics.get("parameters")
    size = f"{params / 1e6:.2f} M parameters" if params else "size not recorded"
    results = []
    if corpus and metrics.get("val_bert15_perplexity") is not None:
        name = f"{corpus}, held-out {data.get('validation_fraction', 0):.0%} of the documents read"
        for kind, value, label in (
            ("perplexity", metrics["val_bert15_perplexity"], "MLM perplexity at 15 % masking"),
            ("accuracy", metrics.get("val_bert15_accuracy"), "masked-token accuracy at 15 % masking"),
        ):
            if value is not None:
                results.append(EvalResult(task_type="fill-mask", dataset_type=corpus, dataset_name=name,
                                          metric_type=kind, metric_value=round(float(value), 4), metric_name=label))  # fmt: skip
    front = metadata(
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=["fill-mask", "masked-language-modeling", arch, PROJECT_TAG],
        datasets=[corpus],
        model_name=run_name,
        results=results,
    )
    summary = (
        f"A small English encoder ({CLASSES.get(arch, arch)}, {shape}, {size}) pretrained from scratch with masked "
        f"language modelling on {source_words(data.get('source'))} by this project's `python -m pretrain`: "
        f"{_int(metrics.get('step'))} steps, {_tokens(metrics.get('tokens_seen'))} tokens. It is a starting point for "
        "fine-tuning (e.g. into the Siamese sentence encoder of `python -m siamese`), not a finished model."
    )
    sections = [
        ("Model", _model_table(arch, config, size)),
        ("Data", _data_section(data, metrics)),
        ("Tokenizer", _tokenizer_section(tokenizer, config, metrics)),
        ("Training recipe", _recipe_table(train, data, metrics)),
        ("Hardware and time", _time_table(metrics, hardware)),
        ("Evaluation", _evaluation_table(metrics, train)),
        ("How to load", _loading(model_reference(folder, final))),
        ("Limits", _limits(arch, params, metrics, data, tokenizer)),
        ("License", _license(data.get("source"))),
    ]
    return Card(front, f"{run_name}: a small {arch} pretrained with MLM", summary, sections)


def _model_table(arch: str, config: dict, size: str) -> str:
    return table([
        ("class", f"`{CLASSES.get(arch, arch)}` (transformers)"),
        ("layers / hidden / heads / feed-forward", f"{config.get('num_hidden_layers')} / {config.get('hidden_size')} / "
         f"{config.get('num_attention_heads')} / {config.get('intermediate_size')}"),
        ("positions", POSITIONS.get(arch, "–")),
        ("vocabulary", config.get("vocab_size")),
        ("parameters", size),
    ])  # fmt: skip


def _data_section(data: dict, metrics: dict) -> str:
    return table([
        ("corpus", source_words(data.get("source"))),
        ("documents read / dropped (shorter than "
         f"{data.get('min_chars', '?')} characters)", f"{_int(metrics.get('documents_read'))} / "
         f"{_int(metrics.get('documents_dropped'))}"),
        ("training / validation documents (a hash split by document)",
         f"{_int(metrics.get('train_documents'))} / {_int(metrics.get('validation_documents'))}"),
        ("packed blocks of "
         f"{data.get('block_size', '?')} tokens, training / validation",
         f"{_int(metrics.get('train_blocks'))} / {_int(metrics.get('validation_blocks'))}"),
        ("training tokens", _int(metrics.get("train_tokens"))),
    ])  # fmt: skip


def _tokenizer_section(tokenizer: dict, config: dict, metrics: dict) -> str:
    case = "lowercased, accents stripped (uncased)" if tokenizer.get("lowercase", True) else "cased"
    # The documents the data build fed the tokenizer (pretrain/build.py `tokenizer_documents`): fewer than
    # tokenizer.max_training_documents when the corpus is smaller; a folder from before it was recorded gives the cap.
    read = metrics.get("tokenizer_documents")
    documents = _int(read) if read is not None else f"up to {_int(tokenizer.get('max_training_documents'))}"
    return (
        f"WordPiece, {config.get('vocab_size')} entries, {case}, learnt on the first "
        f"{documents} training documents (pieces seen at least "
        f"{tokenizer.get('min_frequency', '?')} times); `[CLS] … [SEP]` around each block, `[MASK]` for masked tokens."
    )


def _recipe_table(train: dict, data: dict, metrics: dict) -> str:
    per_device, accumulation = train.get("per_device_train_batch_size"), train.get("gradient_accumulation_steps", 1)
    processes = metrics.get("processes", 1)
    global_batch = (per_device or 0) * (accumulation or 1) * (processes or 1)
    p, m, r = train.get("mlm_probability"), train.get("mask_replace_prob"), train.get("random_replace_prob")
    keep = 1 - (m or 0) - (r or 0)
    rows = [
        ("objective", f"MLM: {p:.0%} of tokens selected; of those {m:.0%} [MASK], {r:.0%} random, {keep:.0%} kept"
         if None not in (p, m, r) else "MLM"),
        ("optimizer", f"AdamW, learning rate {train.get('learning_rate')}, β {train.get('adam_beta1')} / "
         f"{train.get('adam_beta2')}, weight decay {train.get('weight_decay')}"),
        ("schedule", f"{train.get('lr_scheduler_type')} after {warmup_words(train.get('warmup_steps'))} of linear warmup"),
        ("batch", f"{per_device} blocks × {accumulation} accumulation × {processes} process(es) = {global_batch} "
         f"blocks = {global_batch * int(data.get('block_size') or 0):,} tokens a step"),
        ("steps", f"{_int(metrics.get('step'))} of max_steps {_int(train.get('max_steps'))} "
         f"({metrics.get('stop_reason', '?')})"),
        ("short-block warm-up", f"{train.get('short_block_steps')} steps of {train.get('short_block_size')}-token pieces"
         if train.get("short_block_steps") else "none"),
        ("precision", metrics.get("precision")),
        ("seed", train.get("seed")),
    ]  # fmt: skip
    return table(rows) + "\n\nEvery setting is in `resolved_config.yaml` beside the weights."


def _time_table(metrics: dict, hardware: str | None) -> str:
    return table([
        ("hardware", hardware or "not recorded"),
        ("wall time (data preparation included)", duration(metrics.get("wall_time_s"))),
        ("throughput", f"{metrics['tokens_per_s']:,.0f} tokens/s" if metrics.get("tokens_per_s") else None),
    ])  # fmt: skip


def _evaluation_table(metrics: dict, train: dict) -> str:
    rows = [
        ("validation loss at BERT's 15 % / 80-10-10 masking (nats)", number(metrics.get("val_bert15_loss"))),
        ("perplexity at that masking", number(metrics.get("val_bert15_perplexity"), 1)),
        ("masked-token accuracy", percent(metrics.get("val_bert15_accuracy"))),
        ("unigram entropy of the training tokens (the loss of guessing by frequency)",
         number(metrics.get("unigram_entropy"))),
        (f"cloze: one content word masked in {_int(metrics.get('cloze_items'))} held-out sentences, top-1 / top-5",
         f"{percent(metrics.get('cloze_top1'))} / {percent(metrics.get('cloze_top5'))} (by frequency alone: "
         f"{percent(metrics.get('cloze_frequency_top1'))} / {percent(metrics.get('cloze_frequency_top5'))})"),
        ("attention entropy per layer (uniform: "
         f"{number(metrics.get('attention_uniform_entropy'), 2)})", metrics.get("attention_entropy")),
    ]  # fmt: skip
    if train.get("mlm_probability") not in (None, 0.15):
        rows.insert(0, (f"validation loss at the training masking ({train['mlm_probability']:.0%})",
                        number(metrics.get("val_loss"))))  # fmt: skip
    return table(rows) + "\n\nAll from `metrics.json` beside the weights (validation: held-out documents)."


def _loading(model_id: str) -> str:
    return f"""```python
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

model_id = "{model_id}"
model = AutoModelForMaskedLM.from_pretrained(model_id)
tokenizer = AutoTokenizer.from_pretrained(model_id)
print(pipeline("fill-mask", model=model, tokenizer=tokenizer)("the movie was [MASK] ."))

# as a sentence encoder (mean pooling over the last layer), before any fine-tuning:
from sentence_transformers import SentenceTransformer

encoder = SentenceTransformer(model_id)
```

Fine-tune it with this project: `python -m siamese --config configs/siamese/cpu-small.yaml
model.base_model=<this folder>` (the Siamese encoder), or measure it as a cross-encoder on MNLI:
`python -m pretrain.probe --model <this folder>`. The MLM head (`cls.*`) is unused by both; loading the folder
without it reports those weights as unused, which is expected."""


def _limits(arch: str, params: int | None, metrics: dict, data: dict, tokenizer: dict) -> str:
    tokens = metrics.get("tokens_seen") or 0
    lines = [
        f"- **Small**: {params / 1e6:.2f} M parameters (BERT-Medium: 41 M, BERT-Base: 110 M)." if params else "- **Small.**",
        f"- **Short training**: {_tokens(tokens)} tokens, {tokens / BERT_TOKENS:.1e} of the ~128 billion BERT saw "
        "(Devlin et al. 2019: 1 M steps of 128,000 tokens). Expect far weaker downstream scores than published "
        "BERT checkpoints of any size.",
        f"- **Sequences of at most {data.get('block_size', '?')} tokens** in training; positions beyond were never "
        "trained.",
        "- **English only**, " + ("**lowercase** WordPiece: case is lost. " if tokenizer.get("lowercase", True)
                                  else "cased WordPiece. ") + "The vocabulary is learnt on this corpus alone.",
        "- **No next-sentence prediction**: segment (token type) 1 and the pooler were never trained; a "
        "fine-tuned pair classifier learns them from scratch.",
    ]  # fmt: skip
    if not dataset_id(data.get("source")) or "imdb" in str(data.get("source")):
        lines.append(
            f"- **Stand-in corpus**: {source_words(data.get('source'))}, a small offline corpus, not the web text "
            "(OpenWebText) or the books and Wikipedia BERT was trained on; its vocabulary, topics and biases are "
            "that corpus's (movie reviews, for IMDB)."
        )
    return "\n".join(lines)


def _license(source: str | None) -> str:
    return (
        f"The weights derive from {source_words(source)}, whose terms apply; the front matter says `license: other` "
        "until you set the license that fits before sharing the model."
    )


def _tokens(value: float | None) -> str:
    if not value:
        return "?"
    return f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.1f} M" if value >= 1e6 else f"{value:,.0f}"


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "–"


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.card", description="(Re)write the model card README.md of a pretraining output."
    )
    parser.add_argument("model", help="a pretraining output folder (config.json, metrics.json, resolved_config.yaml)")
    args = parser.parse_args(argv)
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a pretraining output (no config.json)")
    if not replaceable(folder):
        raise UserError(f"{folder / 'README.md'} is not a card of this project's: move it away to write one")
    path = write_model_card(folder)
    print(path)
    return path


if __name__ == "__main__":
    from stagekit.cli import run_cli

    sys.exit(run_cli(main))
