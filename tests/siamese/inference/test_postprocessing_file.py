"""postprocessing.json has one reader (siamese/inference/postprocess.py `read_postprocessing`): the encoder, the
card, evaluation, export and the app see the same file the same way, and a damaged one is one line."""

from __future__ import annotations

import json
import shutil

import pytest

from app.models import read_model_card
from siamese.inference.encoder import NLIEncoder
from siamese.inference.postprocess import POSTPROCESS_FILE, postprocessing_modules, read_postprocessing
from stagekit.errors import UserError


def test_a_folder_without_the_file_has_no_post_processing(tmp_path):
    assert read_postprocessing(tmp_path) is None
    assert postprocessing_modules(tmp_path) == 0


def test_the_file_is_read_as_written(tmp_path):
    (tmp_path / POSTPROCESS_FILE).write_text(json.dumps({"modules": 1, "chosen": {"method": "whiten"}}))
    assert read_postprocessing(tmp_path) == {"modules": 1, "chosen": {"method": "whiten"}}
    assert postprocessing_modules(tmp_path) == 1


@pytest.mark.parametrize(("text", "words"), [("{not json", "could not be read"), ("[1, 2]", "is not a JSON object")])
def test_a_damaged_file_is_one_line_for_the_encoder_and_a_note_in_the_app(tiny_model_dir, tmp_path, text, words):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / POSTPROCESS_FILE).write_text(text)
    with pytest.raises(UserError, match=f"{POSTPROCESS_FILE} {words}") as raised:
        read_postprocessing(model)
    assert "\n" not in str(raised.value) and "python -m siamese.fit_postprocessing" in str(raised.value)
    with pytest.raises(UserError, match=words):
        NLIEncoder.load(model, device="cpu")
    card = read_model_card(model)
    assert card.postprocessing is None and any(words in note for note in card.notes)
