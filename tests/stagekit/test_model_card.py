"""The shared card pieces: which names are Hub ids, how local data are named, and the load line a push sets."""

from __future__ import annotations

import pytest

from stagekit.model_card import (
    CARD_FILE,
    dataset_id,
    duration,
    hub_id,
    model_reference,
    source_words,
    with_model_reference,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("me/model", "me/model"), ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
     ("all-MiniLM-L6-v2", None), ("/abs/path/model", None), ("outputs/x/model/", None), ("", None), (None, None)],
)  # fmt: skip
def test_hub_ids_are_owner_slash_name_and_not_local_paths(name, expected):
    assert hub_id(name) == expected


def test_an_existing_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "model").mkdir(parents=True)
    assert hub_id("outputs/model") is None


def test_shared_data_files_are_named_by_the_hub_set_they_come_from_without_machine_paths():
    assert dataset_id("/data/shared/mnli/train.jsonl.gz") == "nyu-mll/glue"
    assert dataset_id("/data/shared/stsb/test.jsonl.gz") == "sentence-transformers/stsb"
    assert dataset_id("/data/shared/pretrain/imdb_100k.jsonl.gz") == "stanfordnlp/imdb"
    assert dataset_id("/data/shared/pretrain/wikipedia_2015.jsonl.gz") is None
    assert dataset_id("Skylion007/openwebtext") == "Skylion007/openwebtext"
    words = source_words("/data/shared/mnli/train.jsonl.gz")
    assert "`mnli/train.jsonl.gz`" in words and "nyu-mll/glue" in words and "/data/shared" not in words


def test_the_load_line_names_the_folder_until_a_push_names_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "outputs" / "run" / "model"
    folder.mkdir(parents=True)
    assert model_reference(folder) == "outputs/run/model"  # as a user types it from here
    card = '# card\n\n```python\nmodel_id = "outputs/run/model"\nmodel = X(model_id)\n```\n'
    pushed = with_model_reference(card, "me/encoder")
    assert 'model_id = "me/encoder"' in pushed and "model = X(model_id)" in pushed
    (folder / CARD_FILE).write_text(pushed)
    assert model_reference(folder) == "me/encoder"  # a card written again keeps the repo it was pushed to


def test_durations_read_as_minutes_and_seconds():
    assert duration(820.4) == "13 min 40 s" and duration(45) == "45 s" and duration(None) == "–"


# A model folder outside the working directory was named by its absolute path in the card that --push-to-hub uploads.
def test_a_pushed_card_names_the_repo_wherever_it_named_the_folder(tmp_path):
    folder = str(tmp_path / "outputs" / "run" / "model")
    card = (
        f'```python\nmodel_id = "{folder}"\n```\n\nNot evaluated yet: `python -m siamese.evaluation --model {folder}`; '
        f"{folder}-step-3 and {folder}s are other folders.\n"
    )
    pushed = with_model_reference(card, "me/encoder")
    assert 'model_id = "me/encoder"' in pushed and "--model me/encoder`" in pushed
    assert f"{folder}-step-3" in pushed and f"{folder}s are" in pushed  # only the folder itself
