"""`python -m app.space --model OWNER/NAME --out DIR [--push OWNER/SPACE] [--private] [--token-env NAME]`: a
Hugging Face Space that runs this app on a model published with `python -m stagekit.push` (docs/app.md, "As a
Hugging Face Space").

The folder holds what a Streamlit Space runs: `README.md` (the Space's front matter: sdk streamlit, its version,
the entry file, the model it shows), `space_app.py` (the entry: the app on that model), `requirements.txt` (the
app's runtime packages; the Space installs streamlit itself), copies of the packages the app imports (`app/`,
`siamese/`, `stagekit/`) and `data/`: the example pairs and the search tab's sentences, taken from the example
source the app reads here (`APP_EXAMPLES`, else MNLI dev matched in `${BERT_DATA_DIR}`), since a Space has no
data folder. With `--push` the folder is uploaded as a Space (stagekit/push.py). A folder this command wrote
before is written again (so a push that failed is retried with the same command); any other non-empty folder is
refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from app.examples import DEFAULT_LIMIT, EXAMPLES_ENV, Example, example_sources, first_source
from app.search import SENTENCES_ENV
from siamese.inference.encoder import LABELS
from stagekit.cli import doc_summary
from stagekit.config import REPO_ROOT
from stagekit.errors import UserError
from stagekit.folders import atomic_dir
from stagekit.model_card import CARD_FILE, hub_id, source_words

ENTRY = "space_app.py"
DATA = "data"
EXAMPLES_FILE = f"{DATA}/examples.jsonl"  # the picker's pairs: premise, hypothesis, label (0/1/2, -1 for none)
SENTENCES_FILE = f"{DATA}/sentences.txt"  # the search tab's default sentences, one per line
SEARCH_SENTENCES = 300  # distinct premises: encoded on a free CPU Space's first search in seconds, not minutes
PACKAGES = ("app", "siamese", "stagekit")  # what app/streamlit_app.py imports, transitively
# The runtime part of requirements.txt, with its bounds (tests/app/test_space.py keeps them in step); the CPU
# wheel of torch, as a free CPU Space runs it.
REQUIREMENTS = """--extra-index-url https://download.pytorch.org/whl/cpu
torch>=2.5
transformers>=5.0,<6
tokenizers>=0.22
datasets>=5.0,<6
sentence-transformers>=6.0,<7
accelerate>=1.10
safetensors>=0.4
scikit-learn>=1.5
pyyaml>=6.0
pandas>=2.2
"""
ENTRY_CODE = '''"""The Space's entry: the bert-sentence-encoder app on {model} (APP_MODEL_DIR, a Space variable, overrides it)."""

import os
import runpy
from pathlib import Path

os.environ.setdefault("APP_MODEL_DIR", "{model}")
os.environ.setdefault("APP_OUTPUTS_DIR", str(Path(__file__).parent / "outputs"))  # no local runs in a Space
# A Space has no data folder: the example pairs and the search sentences are files of its own (data/README.md).
os.environ.setdefault("{examples_env}", str(Path(__file__).parent / "{examples_file}"))
os.environ.setdefault("{sentences_env}", str(Path(__file__).parent / "{sentences_file}"))
runpy.run_path(str(Path(__file__).parent / "app" / "streamlit_app.py"), run_name="__main__")
'''


def space_readme(model: str, title: str, streamlit_version: str) -> str:
    return f"""---
title: {title}
emoji: 🔎
colorFrom: blue
colorTo: green
sdk: streamlit
sdk_version: {streamlit_version}
app_file: {ENTRY}
pinned: false
models:
- {model}
short_description: Sentence similarity and NLI with a small Siamese BERT
---

# {title}

The Streamlit app of the bert-sentence-encoder project on the model [{model}](https://huggingface.co/{model}): the cosine similarity of two sentences read against random sentence
pairs, the NLI head's entailment / neutral / contradiction, semantic search and a batch tab. Set the Space
variable `APP_MODEL_DIR` to show another model published by `python -m stagekit.push`. The example pairs and the
sentences searched by default are in `{DATA}/` ({DATA}/README.md names their source).
"""


def data_readme(source: str, pairs: int, sentences: int) -> str:
    return f"""# The Space's data

- `{EXAMPLES_FILE}`: the first {pairs} pairs of {source_words(source)}, the example picker's pairs (premise,
  hypothesis, label: 0 entailment, 1 neutral, 2 contradiction, -1 no gold label).
- `{SENTENCES_FILE}`: {sentences} distinct premises of the first pairs of the same set, one per line: the
  sentences the search tab searches by default.

Written by `python -m app.space` of the bert-sentence-encoder project; the terms of the dataset they come from
apply (see its card on the Hugging Face Hub).
"""


def read_space_data(sources: Sequence[str]) -> tuple[str, list[Example]]:
    """The first example source of `sources` that gives pairs, and its first pairs (enough for SEARCH_SENTENCES
    distinct premises); a one-line UserError naming each source's problem when none does."""
    source, rows, problems = first_source(sources, limit=4 * SEARCH_SENTENCES)  # premises repeat: ~3 hypotheses each
    if source is not None:
        return source, rows
    raise UserError(f"no example pairs for the Space ({'; '.join(problems)}): set BERT_DATA_DIR to the data folder "
                    f"or {EXAMPLES_ENV} to an NLI file")  # fmt: skip


def write_data(folder: Path, source: str, rows: list[Example]) -> None:
    """`folder`/data: the example pairs, the search sentences and a README naming their source."""
    (folder / DATA).mkdir()
    examples = rows[:DEFAULT_LIMIT]
    with open(folder / EXAMPLES_FILE, "w", encoding="utf-8") as out:
        for e in examples:
            label = LABELS.index(e.gold) if e.gold is not None else -1
            out.write(json.dumps({"premise": e.premise, "hypothesis": e.hypothesis, "label": label}) + "\n")
    sentences = list(dict.fromkeys(e.premise for e in rows))[:SEARCH_SENTENCES]
    (folder / SENTENCES_FILE).write_text("".join(f"{s}\n" for s in sentences), encoding="utf-8")
    (folder / DATA / CARD_FILE).write_text(data_readme(source, len(examples), len(sentences)), encoding="utf-8")


def written_here(folder: Path) -> bool:
    """Whether `folder` is a Space folder this command wrote: its entry file, and a README whose front matter
    names that entry."""
    from huggingface_hub import RepoCard

    if not (folder / ENTRY).is_file():
        return False
    try:
        return RepoCard.load(folder / CARD_FILE).data.to_dict().get("app_file") == ENTRY
    except Exception:  # no README, or one that does not parse: not ours to overwrite
        return False


def write_space(model: str, out: Path, title: str | None = None) -> Path:
    """Write the Space folder for Hub model `model` into `out`, in one rename: a new or empty folder, or one this
    command wrote before (replaced whole). Raises a one-line UserError for a model that is not a Hub id, another
    non-empty folder, or no example source to take the Space's data from (nothing is written then)."""
    import streamlit

    if hub_id(model) is None:
        raise UserError(f"--model {model!r}: a Space shows a model on the Hub (owner/name; push it first with "
                        "python -m stagekit.push MODEL_DIR OWNER/NAME)")  # fmt: skip
    if out.exists() and any(out.iterdir()) and not written_here(out):
        raise UserError(f"{out} is not empty and not a Space folder of python -m app.space: pass a new folder "
                        "with --out")  # fmt: skip
    source, rows = read_space_data(example_sources())
    with atomic_dir(out) as tmp:
        for package in PACKAGES:
            shutil.copytree(REPO_ROOT / package, tmp / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        entry = ENTRY_CODE.format(model=model, examples_env=EXAMPLES_ENV, examples_file=EXAMPLES_FILE,
                                  sentences_env=SENTENCES_ENV, sentences_file=SENTENCES_FILE)  # fmt: skip
        (tmp / ENTRY).write_text(entry, encoding="utf-8")
        (tmp / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
        name = title or model.split("/")[-1]
        (tmp / CARD_FILE).write_text(space_readme(model, name, streamlit.__version__), encoding="utf-8")
        write_data(tmp, source, rows)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m app.space", description=doc_summary(__doc__))
    parser.add_argument("--model", required=True, help="the Hub id of a model pushed with python -m stagekit.push")
    parser.add_argument("--out", required=True, type=Path, help="a new folder for the Space's files (or one this "
                        "command wrote before: written again)")  # fmt: skip
    parser.add_argument("--title", help="the Space's title (default: the model's name)")
    parser.add_argument("--push", metavar="OWNER/SPACE", help="also upload the folder as this Space")
    parser.add_argument("--private", action="store_true", help="with --push: create the Space private")
    parser.add_argument("--token-env", metavar="NAME", help="with --push: read the token from this environment "
                        "variable")  # fmt: skip
    args = parser.parse_args(argv)
    if args.push:
        from stagekit.push import check_repo_id

        check_repo_id(args.push)  # before anything is written
    out = write_space(args.model, args.out, args.title)
    print(out)
    if args.push:
        from stagekit.push import check_hub, push_folder

        token = check_hub(args.push, out, args.token_env, private=args.private)  # its advice: stagekit.push, as asked
        url = push_folder(out, args.push, private=args.private, token=token, repo_type="space", space_sdk="streamlit")
        print(url)
    return out


if __name__ == "__main__":
    from stagekit.cli import run_cli

    sys.exit(run_cli(main))
