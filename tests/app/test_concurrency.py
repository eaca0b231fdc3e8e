"""Several app sessions at once on one cached encoder: every answer equals the one a lone session gets.

Streamlit runs each session's script in its own thread and `st.cache_resource` hands all of them the same
`NLIEncoder`, so its tokenizer and model are used from several threads at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from app.predict import PairResult, predict_pair, predict_table
from app.search import SearchIndex, search_table
from siamese.inference.encoder import NLIEncoder
from tests.app.tiny_model import MAX_SEQ_LENGTH

LONG = "a very long premise about a man who walks his dog in the park " * 12  # far past MAX_SEQ_LENGTH tokens
SHORT = ["A man eats.", "Someone eats food.", "Two dogs run in a park.", "It rains.", "A cat sleeps on a mat."]
PAIRS = [(LONG, SHORT[0]), (SHORT[1], SHORT[2]), (SHORT[3], LONG), ("word " * 60, "x"), (SHORT[4], SHORT[0])]


def run_in_threads(jobs: list[Callable[[], object]], threads: int = 4, rounds: int = 25) -> list[object]:
    """Every job `rounds` times in each of `threads` threads, started together; the results, or the exceptions."""
    start = threading.Barrier(threads)
    results: list[object] = []
    lock = threading.Lock()

    def work(offset: int) -> None:
        start.wait()
        for i in range(rounds * len(jobs)):
            job = (i + offset) % len(jobs)  # the threads run different jobs at the same moment
            try:
                out = (job, jobs[job]())
            except Exception as err:  # collected: a raise in one thread must fail the test, not vanish
                out = (job, err)
            with lock:
                results.append(out)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return results


def same(a: object, b: object) -> bool:
    if isinstance(a, PairResult):
        return (
            a.truncated == b.truncated
            and a.label == b.label
            and a.cosine == pytest.approx(b.cosine, abs=1e-5)
            and all(a.probs[k] == pytest.approx(b.probs[k], abs=1e-5) for k in a.probs)
        )
    if isinstance(a, pd.DataFrame):
        numbers = a.select_dtypes("number").columns
        return a.drop(columns=numbers).equals(b.drop(columns=numbers)) and np.allclose(
            a[numbers].to_numpy(float), b[numbers].to_numpy(float), atol=1e-5, equal_nan=True
        )
    return bool(np.allclose(a, b, atol=1e-5))


def app_jobs(encoder: NLIEncoder) -> list[Callable[[], object]]:
    """What concurrent sessions ask of one encoder: single pairs, a batch table, a search index and a query."""
    index = SearchIndex.build(encoder, [LONG, *SHORT])
    jobs: list[Callable[[], object]] = [lambda p=p: predict_pair(encoder, *p) for p in PAIRS]
    jobs.append(lambda: predict_table(encoder, [p for p, _ in PAIRS], [h for _, h in PAIRS], batch_size=2))
    jobs.append(lambda: SearchIndex.build(encoder, [*SHORT, LONG]).embeddings)
    jobs.append(lambda: search_table(index, encoder, LONG, k=3))
    return jobs


def check_every_answer(encoder: NLIEncoder, rounds: int) -> None:
    jobs = app_jobs(encoder)
    alone = [job() for job in jobs]
    assert [r.truncated for r in alone[: len(PAIRS)]] == [True, False, True, True, False]
    assert encoder.max_seq_length == MAX_SEQ_LENGTH
    results = run_in_threads(jobs, rounds=rounds)
    errors = [f"job {job}: {type(out).__name__}: {out}" for job, out in results if isinstance(out, Exception)]
    assert not errors, f"{len(errors)} of {len(results)} calls raised, e.g. {errors[0]}"
    wrong = [job for job, out in results if not same(out, alone[job])]
    assert not wrong, f"{len(wrong)} of {len(results)} answers differ from a lone session's (jobs {sorted(set(wrong))})"


def test_concurrent_sessions_get_the_lone_session_answers(tiny_encoder):
    check_every_answer(tiny_encoder, rounds=25)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_concurrent_sessions_on_the_onnx_backend(tiny_exported_dir, backend):
    check_every_answer(NLIEncoder.load(tiny_exported_dir, backend=backend), rounds=25)
