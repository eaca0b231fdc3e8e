"""Publish a model folder on the Hugging Face Hub: `python -m stagekit.push MODEL_DIR REPO [--private]
[--token-env NAME]` (`bert-push`), and `--push-to-hub REPO` on both training stages.

A Space folder that `python -m app.space` wrote (its README.md front matter names an `sdk`) is pushed as a Space.

`huggingface_hub`'s `create_repo` + `upload_folder` send the whole folder: weights, tokenizer, config, the model
card, and for a fine-tuned model its NLI head, post-processing and random-pair reference, so the Hub copy loads
as the folder does (`SentenceTransformer(repo)`, `snapshot_download(repo)` for the head). The card's
`model_id = "..."` line is set to the repo first (stagekit/model_card.py). Everything that can fail early does,
in one line: an invalid repo id, an unreachable Hub (within seconds, naming the folder that is already there to
use), a missing token. A stage checks before training, so a run never ends in a push that cannot happen.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from stagekit.cli import doc_summary
from stagekit.errors import UserError
from stagekit.folders import atomic_write_text
from stagekit.model_card import CARD_FILE, with_model_reference
from stagekit.sources import hub_reachable

log = logging.getLogger(__name__)
# The Hub's refusals and the HTTP library's own failures (a connection dropped mid-upload), whichever library
# huggingface_hub is built on: HfHubHTTPError derives from that library's HTTPError.
HUB_ERRORS = (OSError, ValueError, *(c for c in HfHubHTTPError.__mro__ if c.__name__ == "HTTPError"))
# Never sent: W&B's offline runs (evaluation writes them beside its report), half-written folders, lock files.
IGNORE = ["wandb/**", ".tmp-*", ".old-*", "*.lock", "__pycache__/**"]


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"'{repo_id}' is not a Hub repository id (owner/name): {str(err).splitlines()[0]}") from None


def push_command(folder: str | Path, repo_id: str, *, private: bool = False, token_env: str | None = None) -> str:
    """The `python -m stagekit.push` command that pushes `folder` to `repo_id` as the user asked: every option
    given (--private, --token-env) kept, each word quoted for a POSIX shell where it needs it."""
    words = ["python", "-m", "stagekit.push", str(folder), repo_id]
    words += ["--private"] if private else []
    words += ["--token-env", token_env] if token_env else []
    return shlex.join(words)


def check_hub(
    repo_id: str,
    folder: Path,
    token_env: str | None = None,
    *,
    private: bool = False,
    trained: bool = True,
    again: str | None = None,
) -> str | None:
    """Fail in one line unless `folder` can be pushed to `repo_id` now: a valid id, the Hub reachable (within
    seconds), a token (`token_env`'s variable, else HF_TOKEN or `hf auth login`). Returns the token to use.
    `trained`: the folder exists already (else a stage is about to write it); `again`: the command that pushes it
    later (default: `push_command` with `private` and `token_env`, so following it publishes what was asked)."""
    check_repo_id(repo_id)
    again = again or push_command(folder, repo_id, private=private, token_env=token_env)
    if not hub_reachable():
        if trained:
            space = space_sdk(folder) is not None
            use = "a Space's files run here too" if space else "a local path loads like the repo would"
            raise UserError(
                f"cannot push {folder} to {repo_id}: the Hugging Face Hub is unreachable (offline?); {folder} is "
                f"there to use as it is ({use}); push it once online with {again}"
            )
        raise UserError(
            f"--push-to-hub {repo_id}: the Hugging Face Hub is unreachable (offline?); train without --push-to-hub "
            f"(the model goes to {folder}) and push it once online with {again}"
        )
    if token_env is not None:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise UserError(f"--token-env {token_env}: the environment variable {token_env} is not set")
        return token
    if not get_token():
        raise UserError(
            f"no Hugging Face token to push {folder} with: run `hf auth login`, set HF_TOKEN, or pass --token-env NAME"
        )
    return None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    repo_type: str = "model",
    space_sdk: str | None = None,
) -> str:
    """Create `repo_id` (kept if it exists) and upload `folder` to it in one commit; returns the repo's URL.

    Raises UserError (one line) when the Hub refuses (no write access, a bad token) or the upload fails; the
    folder is left as it was.
    """
    folder = Path(folder)
    api = HfApi(token=token)
    card, original = folder / CARD_FILE, None
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk)
        if card.is_file():  # the card's load snippets name the repo, on the Hub and in the folder
            original = card.read_text(encoding="utf-8")
            atomic_write_text(card, with_model_reference(original, repo_id))
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            ignore_patterns=IGNORE,
            commit_message=f"Upload {folder.parent.name}/{folder.name} (bert-sentence-encoder)",
        )
    except HUB_ERRORS as err:
        if original is not None:
            atomic_write_text(card, original)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"pushing {folder} to {repo_id} failed: {first}; the folder is unchanged") from None
    log.info("pushed %s to %s", folder, url)
    return str(url)


def space_sdk(folder: Path) -> str | None:
    """The `sdk` of a Space folder (its README.md front matter names one, e.g. "streamlit"; app/space.py writes
    such a folder), else None: a model card's front matter has no `sdk`."""
    from huggingface_hub import RepoCard

    try:
        sdk = RepoCard.load(folder / CARD_FILE).data.to_dict().get("sdk")
    except Exception:  # no card, or one that does not parse: not a Space folder
        return None
    return sdk if isinstance(sdk, str) and sdk else None


@contextlib.contextmanager
def pushed_when_done(repo_id: str | None, folder: Path, private: bool = False) -> Iterator[None]:
    """A stage's `--push-to-hub REPO`: checked before the block (training) runs, `folder` pushed after it
    succeeds, from global rank 0 only. Nothing happens without a repo."""
    if repo_id is None:
        yield
        return
    token = check_hub(repo_id, folder, private=private, trained=False)
    yield
    from stagekit.distributed import rank_and_size  # torch: only a stage, which has it loaded, gets here

    if rank_and_size()[0] == 0:
        url = push_folder(folder, repo_id, private=private, token=token)
        print(f"pushed to {url}", flush=True)


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="python -m stagekit.push", description=doc_summary(__doc__))
    built.add_argument("model", help="a model folder, e.g. outputs/siamese-cpu-small/model, or a Space folder")
    built.add_argument("repo", help="the Hub repository, owner/name (created if missing)")
    built.add_argument("--private", action="store_true", help="create the repository private")
    built.add_argument("--token-env", metavar="NAME", help="read the token from this environment variable")
    return built


def main(argv: Sequence[str] | None = None) -> str:
    args = parser().parse_args(argv)
    folder = Path(args.model)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such model folder")
    sdk = space_sdk(folder)
    if sdk is None and not any((folder / name).is_file() for name in ("config.json", "modules.json")):
        raise UserError(f"{folder}: not a model folder (no config.json or modules.json) nor a Space folder "
                        "(python -m app.space)")  # fmt: skip
    token = check_hub(args.repo, folder, args.token_env, private=args.private)
    kind = {"repo_type": "space", "space_sdk": sdk} if sdk else {}
    url = push_folder(folder, args.repo, private=args.private, token=token, **kind)
    print(url)
    return url


def cli() -> None:
    from stagekit.cli import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
