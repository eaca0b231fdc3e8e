"""docs/results.md reports measurements, not their history: one set of as-shipped cpu-small figures (the
README's, with command, machine and date), and each claim with the condition it holds under."""

from __future__ import annotations

import json
import re

from stagekit.config import REPO_ROOT

PAGE = (REPO_ROOT / "docs" / "results.md").read_text(encoding="utf-8")
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_one_as_shipped_figure_set_the_readmes():
    headings = [line for line in PAGE.splitlines() if line.startswith("#") and "as shipped" in line]
    assert len(headings) == 1, headings
    assert len(re.findall(r"\*\*as shipped\*\*", PAGE)) == 0  # no second "as shipped" row elsewhere
    (date,) = re.findall(r"\d{4}-\d{2}-\d{2}", headings[0])
    section = PAGE.split(headings[0], 1)[1].split("\n## ", 1)[0]
    assert "python -m pipeline" in section and "2-core" in section and date in section
    recorded = json.loads((REPO_ROOT / "bench" / "recipe_figures.json").read_text(encoding="utf-8"))["figures"]
    shown = {"MNLI dev matched %": 1, "MNLI dev mismatched %": 1, "STS-B test ×100": 1, "retrieval MRR@10": 3}
    for name, digits in shown.items():  # the README's headline is the recorded check, as results.md gives it
        figure = f"{recorded[name]['mean']:.{digits}f} ± {recorded[name]['spread']:.{digits}f}"
        assert figure in section and figure in README.replace("**", ""), figure
    assert date in README


def test_the_page_does_not_narrate_history():
    for phrase in ("when the problem was reported", "until SNLI dev replaced it", "used to", "As first shipped",
                   "the old recipe", "now chosen"):  # fmt: skip
        assert phrase not in PAGE, phrase


def test_the_cached_loss_claim_says_it_holds_without_dropout():
    claim = PAGE.split("**Cached negatives**", 1)[1].split("\n- **", 1)[0]
    assert "every printed digit" in claim and "dropout" in claim
