"""The fine-tuned encoder's model card (README.md), in place of the generic one `SentenceTransformer.save` writes.

Rendered from the folder alone (resolved_config.yaml, run_info.json, metrics.json, postprocessing.json and, once
`python -m siamese.evaluation` has run, report.json), so training writes it (siamese/train.py `save_final`) and
evaluation refreshes it with its figures (`refresh_model_card`). The layout and the Hub front matter are
stagekit/model_card.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult

from siamese.inference.encoder import HEAD_FILE, MINILM_NAMES
from siamese.inference.postprocess import POSTPROCESS_FILE, read_postprocessing
from stagekit.model_card import (
    PROJECT_TAG,
    Card,
    dataset_id,
    duration,
    hub_id,
    local_reference,
    metadata,
    model_reference,
    percent,
    read_json,
    read_mapping,
    replaceable,
    source_words,
    table,
    warmup_words,
    write_card,
)

log = logging.getLogger(__name__)
# The evaluator's name during training (siamese/trainer.py); its accuracy is logged, and kept in metrics.json, as
# eval_<name>_accuracy. Its pairs are validation data (data.eval_sources: SNLI dev by default), never a set that
# siamese/evaluation/evaluate.py reports.
EVAL_NAME = "validation"
BEST_NLI_METRIC = f"eval_{EVAL_NAME}_accuracy"
# How siamese/nli_data.py `premise_key` splits the validation premises from the training ones, in words.
HOLDOUT_RULE = "blake2b of the premise, lower-cased, letters and digits only"
# The full evaluation sets (GLUE's MNLI validation splits, STS-B test): only a report over all of them goes into
# the card's model-index, under the Hub ids the shared copies were taken from.
FULL_SETS = {
    "mnli_validation_matched": (9815, "nyu-mll/glue", "mnli", "validation_matched", "MNLI dev matched"),
    "mnli_validation_mismatched": (9832, "nyu-mll/glue", "mnli", "validation_mismatched", "MNLI dev mismatched"),
    "stsb_test": (1379, "sentence-transformers/stsb", None, "test", "STS-B test"),
}


def write_model_card(folder: str | Path, final: str | Path | None = None) -> Path:
    """Write `folder`/README.md for the fine-tuned model in `folder` (`final`: where it will live, when `folder`
    is the temporary folder stagekit/stage.py fills)."""
    return write_card(folder, siamese_card(Path(folder), final))


def refresh_model_card(model_dir: str | Path, report_dir: str | Path) -> Path | None:
    """After `python -m siamese.evaluation`: the card again, now with report.json's figures — when the report went
    into the model folder, and the folder's card is this project's (a SentenceTransformer folder from elsewhere,
    e.g. all-MiniLM-L6-v2's, keeps its own card). Returns the card written, or None."""
    model_dir = Path(model_dir)
    if Path(report_dir).resolve() != model_dir.resolve():
        log.info("the report went to %s: the model card in %s is left as it is", report_dir, model_dir)
        return None
    if not _ours(model_dir):
        return None
    path = write_model_card(model_dir)
    log.info("model card updated with the evaluation: %s", path)
    return path


def _ours(folder: Path) -> bool:
    """A folder the siamese stage wrote (run_info.json) whose card is ours or sentence-transformers' generic one
    (a folder of the stage before it wrote its own)."""
    return (folder / "run_info.json").is_file() and replaceable(folder, generated_by="sentence-transformers")


def siamese_card(folder: Path, final: str | Path | None = None) -> Card:
    resolved = read_mapping(folder / "resolved_config.yaml")
    info, metrics = read_mapping(folder / "run_info.json"), read_mapping(folder / "metrics.json")
    report, post = read_mapping(folder / "report.json"), read_postprocessing(folder) or {}
    model, data, loss, train = (resolved.get(k, {}) for k in ("model", "data", "loss", "train"))
    run_name = resolved.get("run_name") or folder.parent.name
    base = model.get("base_model") or info.get("base_model") or "unknown"
    base_id = "sentence-transformers/all-MiniLM-L6-v2" if base in MINILM_NAMES else base
    sources = [s.get("path") for s in data.get("train_sources", [])]
    dim = _embedding_dimension(folder)
    has_head = (folder / HEAD_FILE).is_file()
    results = _model_index(report)
    front = metadata(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=["sentence-transformers", "sentence-similarity", "feature-extraction",
              *(["natural-language-inference"] if has_head else []), "bi-encoder", PROJECT_TAG],
        datasets=[dataset_id(s) for s in sources],
        base_model=base_id,
        model_name=run_name,
        results=results,
    )  # fmt: skip
    width = post.get("truncate_dim") or dim  # an export with --truncate-dim K gives the first K dimensions
    kept = (
        f": the first {width} of {dim}, kept by `python -m siamese.inference.export --truncate-dim {width}`"
        if width != dim
        else ""
    )
    summary = (
        f"A Siamese (bi-encoder) sentence encoder: a transformer with {model.get('pooling', 'mean')} pooling "
        f"({width or '?'}-dimensional embeddings{kept}), fine-tuned on NLI {_units(loss, 'long')} with "
        f"`{loss.get('name', '?')}` loss by this project's `python -m siamese`, starting from {_base_words(base)}. "
        "Each sentence is embedded on its own (cosine similarity, semantic search)"
        + ("; the NLI head saved beside it predicts entailment / neutral / contradiction from the two embeddings."
           if has_head else ".")
    )  # fmt: skip
    sections = [
        ("Data", _data_table(data, info, metrics, loss)),
        ("Tokenizer", _tokenizer_words(info, model)),
        ("Training recipe", _recipe_table(train, loss, metrics, post, dim)),
        ("Hardware and time", _time_table(info, metrics)),
        ("Evaluation", _evaluation(report, metrics, train, data, info, local_reference(final or folder))),
        ("How to load", _loading(model_reference(folder, final), has_head)),
        ("Limits", _limits(info, data, model, has_head)),
        ("License", "The weights derive from the base model and the NLI data above, whose terms apply; the front "
         "matter says `license: other` until you set the license that fits before sharing the model."),
    ]  # fmt: skip
    return Card(front, f"{run_name}: a Siamese sentence encoder fine-tuned on NLI", summary, sections)


def _model_index(report: dict) -> list[EvalResult]:
    """MNLI accuracy and STS-B Spearman of a report over the full sets (a --limit report is not one)."""
    results = []
    for key, (size, hub, config, split, name) in FULL_SETS.items():
        section = report.get(key) or {}
        value = section.get("spearman" if key == "stsb_test" else "accuracy")
        if value is None or section.get("n") != size or report.get("limit") is not None:
            continue
        nli = key != "stsb_test"
        results.append(EvalResult(
            task_type="text-classification" if nli else "sentence-similarity",
            task_name="Natural Language Inference" if nli else "Semantic Textual Similarity",
            dataset_type=hub, dataset_name=name, dataset_config=config, dataset_split=split,
            metric_type="accuracy" if nli else "spearman_cosine", metric_value=round(float(value), 4),
            metric_name="accuracy (NLI head)" if nli else "Spearman of cosine similarity",
        ))  # fmt: skip
    return results


def _units(loss: dict, style: str = "short") -> str:
    """What one training example is: an `mnrl` model learns from triplets, the others from labelled pairs."""
    if loss.get("name") == "mnrl":
        return "triplets (premise, entailed hypothesis, contradicted hypothesis)" if style == "long" else "triplets"
    return "pairs"


def _data_table(data: dict, info: dict, metrics: dict, loss: dict) -> str:
    # run_info.json's data_counts: the training sources' rows only (the held-out rows are validation_counts)
    counts = {name: c for name, c in (info.get("data_counts") or {}).items() if name != "triplets"}
    kept = sum(c.get("kept", 0) for c in counts.values())
    dropped = sum(c.get("dropped_no_label", 0) + c.get("dropped_empty_text", 0) for c in counts.values())
    made = []
    if triplets := (info.get("data_counts") or {}).get("triplets"):
        made.append(("triplets made / premises left without an entailment and a contradiction",
                     f"{triplets.get('triplets', 0):,} / {triplets.get('premises_without_partner', 0):,}"))  # fmt: skip
    return table([
        ("training data", ", ".join(source_words(s.get("path")) for s in data.get("train_sources", []))),
        ("rows read / kept / dropped for no gold label or empty text (each pass over the data counted)",
         f"{sum(c.get('seen', 0) for c in counts.values()):,} / {kept:,} / {dropped:,}"),
        *made,
        (f"{_units(loss)} trained on (with repeats)", f"{metrics.get('pairs_seen', info.get('pairs_seen', 0)):,}"),
        ("held out, scored during training", _validation_words(data, info) if data.get("eval_pairs") else "none"),
    ])  # fmt: skip


def _validation_words(data: dict, info: dict) -> str:
    """Which pairs the checkpoints were scored (and chosen) on: a slice held out of the training sources, or the
    first pairs of an eval source."""
    fraction, count = data.get("validation_fraction"), info.get("validation_pairs")
    if fraction:
        files = ", ".join(source_words(s.get("path")) for s in data.get("train_sources", []))
        return (
            f"{f'{count:,} ' if count else ''}pairs of {files} whose premise falls in a {fraction:g} share by a fixed "
            f"hash ({HOLDOUT_RULE}), never trained on: the training stream, the NLI head's warm start and the "
            "post-processing fit skip every pair of those premises"
        )
    evaluated = (data.get("eval_sources") or [{}])[0].get("path")
    return f"the first {count or data.get('eval_pairs', 0):,} pairs of {source_words(evaluated)}"


def _criterion(metrics: dict) -> str:
    name = str(metrics.get("best_metric_name") or "")
    return "NLI accuracy" if name.endswith("accuracy") else "loss" if name.endswith("loss") else "score"


def _tokenizer_words(info: dict, model: dict) -> str:
    pretrain = yaml.safe_load(info["pretrain_resolved_config"]) if info.get("pretrain_resolved_config") else None
    words = "The base model's tokenizer (saved here)"
    if isinstance(pretrain, dict):
        tok, vocab = pretrain.get("tokenizer", {}), pretrain.get("model", {}).get("vocab_size")
        case = "lowercased" if tok.get("lowercase", True) else "cased"
        words = f"The base model's WordPiece tokenizer ({vocab} entries, {case}; learnt on its pretraining corpus)"
    return f"{words}; sentences are cut at {model.get('max_seq_length', '?')} tokens."


def _recipe_table(train: dict, loss: dict, metrics: dict, post: dict, dim: int | None) -> str:
    per_device, accumulation = train.get("per_device_train_batch_size"), train.get("gradient_accumulation_steps", 1)
    processes = metrics.get("processes", 1) or 1
    head = metrics.get("head_init") or {}
    chosen = (post.get("chosen") or {}).get("method")
    rows = [
        ("loss", {"softmax": "SoftmaxLoss: a linear head over (u, v, \\|u−v\\|), cross-entropy on the NLI label",
                  "both": "SoftmaxLoss plus an in-batch ranking loss on the same pairs",
                  "mnrl": "in-batch ranking of (premise, entailment, contradiction) triplets"}.get(loss.get("name"), "?")),
        ("optimizer", f"AdamW, learning rate {train.get('learning_rate')} (NLI head: "
         f"{train.get('head_learning_rate') or 'the same'}), weight decay {train.get('weight_decay')}"),
        ("schedule", f"{train.get('lr_scheduler_type')} after {warmup_words(train.get('warmup_steps'))} of warmup"),
        ("batch", f"{per_device} {_units(loss)} × {accumulation} accumulation × {processes} process(es)"),
        ("steps", f"{metrics.get('step')} of {train.get('max_steps')} ({metrics.get('stop_reason', '?')})"),
        ("NLI head warm start", f"fitted on the frozen encoder's features of {head.get('pairs', train.get('head_init_pairs'))} "
         "pairs first" if train.get("head_init_pairs") else "none"),
        ("checkpoint shipped", f"step {metrics['best_step']}, chosen by its {_criterion(metrics)} on the validation pairs"
         if metrics.get("best_step") else "the last step"),
        ("post-processing", f"{chosen}, " + (f"selected on {post['selected_on']}" if post.get("selected_on")
                                               else "fixed by the config") if chosen else "none"),
        ("precision / seed", f"{metrics.get('precision', '?')} / {train.get('seed')}"),
    ]  # fmt: skip
    if dims := loss.get("matryoshka_dims"):
        widths = [dim or "full", *sorted(dims, reverse=True)]
        words = ", ".join(map(str, widths[:-1])) + f" and {widths[-1]}"
        rows.append(("Matryoshka widths", f"the ranking loss trained at {words} dimensions (`loss.matryoshka_dims`): "
                     f"`SentenceTransformer(model_id, truncate_dim={widths[1]})` embeds with the first {widths[1]}; "
                     "the NLI head reads the full width"))  # fmt: skip
    return table(rows) + "\n\nEvery setting is in `resolved_config.yaml` beside the weights."


def _time_table(info: dict, metrics: dict) -> str:
    hardware = info.get("hardware") or f"{info.get('device', '?')} (torch {info.get('torch', '?')})"
    rate = metrics.get("pairs_per_s")
    return table([
        ("hardware", hardware),
        ("wall time (post-processing fit included)", duration(metrics.get("wall_time_s"))),
        ("throughput", f"{rate:,.1f} pairs/s" if isinstance(rate, (int, float)) and rate == rate else None),
    ])  # fmt: skip


def is_reported_set(source: dict) -> bool:
    """Whether a data source (a data.eval_sources entry) is one of FULL_SETS, the sets the card's figures come
    from: on the Hub by dataset and split, or a local copy of one (e.g. mnli/validation_matched.jsonl.gz)."""
    path = str(source.get("path") or "")
    local_split = Path(path).name.split(".")[0] if not hub_id(path) else None
    return any(
        dataset_id(path) == hub and (local_split or source.get("split")) == split
        for _, hub, _, split, _ in FULL_SETS.values()
    )


def _evaluation(report: dict, metrics: dict, train: dict, data: dict, info: dict, model_id: str) -> str:
    held_out = metrics.get(BEST_NLI_METRIC)
    if not report:
        line = f"Held-out NLI accuracy during training: {percent(held_out)}. " if held_out is not None else ""
        return line + (
            "Not evaluated yet: this card was written when training ended (a stage's `--push-to-hub` publishes it "
            f"then). `python -m siamese.evaluation --model {model_id}` fills this section on MNLI dev and STS-B test; "
            f"push the folder again afterwards (`python -m stagekit.push {model_id} OWNER/NAME`) to publish it."
        )
    baseline = report.get("baseline") or {}
    rows = [
        ("MNLI dev matched accuracy", percent(_get(report, "mnli_validation_matched", "accuracy"))),
        ("MNLI dev mismatched accuracy", percent(_get(report, "mnli_validation_mismatched", "accuracy"))),
        ("STS-B test Spearman of cosine ×100", _x100(_get(report, "stsb_test", "spearman"))),
    ]
    if report.get("base"):
        rows.append(("STS-B test ×100 of the base before fine-tuning", _x100(report["base"]["stsb_test"]["spearman"])))
    if baseline:
        rows.append((f"STS-B test ×100 of {baseline.get('model')}", _x100(_get(baseline, "stsb_test", "spearman"))))
    sizes = "/".join(str(_get(report, k, "n")) for k in FULL_SETS)
    note = f" on the first {report['limit']} pairs of each set" if report.get("limit") else ""
    backend = f", backend {report['backend']}" if report.get("backend", "torch") != "torch" else ""
    # The pairs checkpoints were chosen on: a slice of the training sources, or the first eval source.
    validation = (
        (data.get("train_sources") or []) if data.get("validation_fraction") else (data.get("eval_sources") or [{}])[:1]
    )
    overlap = ", which are among the pairs scored here" if any(is_reported_set(v) for v in validation) else ""
    chosen = (
        f" The checkpoint was chosen by its {_criterion(metrics)} on {_validation_words(data, info)}{overlap}; "
        "nothing else was chosen on MNLI dev or STS-B test."
        if metrics.get("best_step") and train.get("select_best")
        else ""
    )
    return (
        table(rows)
        + f"\n\nFrom `report.json` (`python -m siamese.evaluation`{backend}{note}: {sizes} pairs); `report.md` has the "
        f"confusion matrices and cosine distributions. Chance on MNLI is 33.3 %.{chosen}"
    )


LOAD = """```python
from sentence_transformers import SentenceTransformer

model_id = "{model_id}"
model = SentenceTransformer(model_id)
embeddings = model.encode(["A man is playing a guitar.", "Someone is making music."])
print(model.similarity(embeddings[:1], embeddings[1:]))
```"""
HEAD = """The NLI head (`{head}`, a linear layer over (u, v, |u−v|)) reads the embedding *before* post-processing: skip
the last `modules` modules that `{post}` names. With this project installed:
`NLIEncoder.load(folder).predict(premises, hypotheses)` (`siamese.inference.encoder`). Without it:

```python
import json
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

folder = Path(model_id) if Path(model_id).is_dir() else Path(snapshot_download(model_id))
post = folder / "{post}"
skip = json.loads(post.read_text())["modules"] if post.is_file() else 0
full = SentenceTransformer(str(folder), device="cpu")
core = SentenceTransformer(modules=list(full)[: len(full) - skip], device="cpu") if skip else full
head = load_file(str(folder / "{head}"))
labels = json.loads((folder / "nli_labels.json").read_text())["labels"]
u, v = core.encode(["A man is playing a guitar.", "Someone is making music."], convert_to_tensor=True)
logits = torch.cat([u, v, (u - v).abs()]) @ head["weight"].T + head["bias"]
print(dict(zip(labels, logits.softmax(-1).tolist())))
```"""


def _loading(model_id: str, has_head: bool) -> str:
    if not has_head:  # loss.name=mnrl trains no NLI head
        return LOAD.format(model_id=model_id) + "\n\nThis model has no NLI head (trained with the ranking loss alone)."
    return LOAD.format(model_id=model_id) + "\n\n" + HEAD.format(head=HEAD_FILE, post=POSTPROCESS_FILE)


def _limits(info: dict, data: dict, model: dict, has_head: bool = True) -> str:
    params = (info.get("pretrain_metrics") or {}).get("parameters")
    head = " Use it for similarity and search; read the NLI head's probabilities as a hint." if has_head else (
        " Use it for similarity and search.")  # fmt: skip
    lines = [
        "- **A bi-encoder**: each sentence is embedded without seeing the other, which bounds NLI accuracy well "
        "below a cross-encoder's (BERT-Base, reading both sentences at once, reaches 84.6 % on MNLI-m, GLUE test, "
        "Devlin et al. 2019)." + head,
        f"- **Small and briefly trained**: {params / 1e6:.2f} M parameters; see the base model's card."
        if params
        else "- **Small and briefly trained**: see the base model's card.",
        f"- **Sentences of at most {model.get('max_seq_length', '?')} tokens**; longer ones are cut.",
        "- **English only**; "
        + ("the NLI head knows" if has_head else "trained on")
        + " MNLI's genres (fiction, government, travel, telephone, Slate).",
        "- **Cosines are relative**: compare them with `similarity_reference.json` (cosines of random sentence "
        "pairs), not with a fixed threshold.",
    ]
    if any(not hub_id(s.get("path")) for s in data.get("train_sources", [])):
        lines.append(
            "- **Local NLI files**: the full MNLI training set (nyu-mll/glue) has 392,702 pairs; a local copy may "
            "hold fewer (the Data table counts what was read)."
        )
    return "\n".join(lines)


def _base_words(base: str) -> str:
    if base in MINILM_NAMES:
        return "[all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)"
    if hub_id(base):
        return f"[{base}](https://huggingface.co/{base})"
    name = Path(base)
    return f"the pretraining output `{name.parent.name}/{name.name}` (its resolved config and metrics are in run_info.json)"


def _embedding_dimension(folder: Path) -> int | None:
    modules = read_json(folder / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        if "Pooling" in str(module.get("type")):
            pooling = read_mapping(folder / module.get("path", "") / "config.json")
            return pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension")  # ST 6 / older
    return None


def _get(section: dict, key: str, field: str) -> Any:
    return (section.get(key) or {}).get(field)


def _x100(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"
