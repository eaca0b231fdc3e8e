"""Weights & Biases: runs, their groups, and model artifacts with their lineage.

Every run is online, offline or disabled, chosen from config, never stopping a run. mode "auto" means: the
WANDB_MODE environment variable if set, else online when WANDB_API_KEY is set, else offline (a run folder under
the output directory that `wandb sync` can upload later).

Training stages log through the Trainer's `report_to=["wandb"]` alone: `trainer_report_to` starts the
run first (on the main process only), with the project, entity, tags and folder from the config and a
fall-back to offline, then to no tracking, so a W&B failure never stops training; transformers'
WandbCallback then logs into that run. Evaluation, which has no Trainer, logs through `Tracker`.

Runs of one pipeline share a W&B group (`wandb.group`); each stage logs its model folder as an artifact and
declares the model it started from as an input (below).

A resumed stage continues its W&B run: each checkpoint records the run's id (stagekit/resume.py), and
`start_run(resume_id=...)` opens that id again with `resume="allow"`, online or offline.

Model artifacts and their lineage, pretraining → fine-tuning → evaluation:

- `log_model`: a stage's finished model folder becomes a W&B artifact of type `model` named after the run folder
  (`wandb.log_model`: at the end, also at each checkpoint, or never), its metrics as metadata, with the alias
  `run-<W&B run id>`. The reference (`wandb_artifact.json`) goes into the model folder, so whatever starts from
  that folder can name it as its input. Offline runs stage the artifact in their run folder for `wandb sync`.
- `use_model`: the active run declares the model it starts from as an input: by the recorded reference
  (`entity/project/name:run-<id>`) online; offline, where the SDK refuses `use_artifact`, by the same artifact
  rebuilt from the recorded files and logged with W&B's use-after-commit flag, which `wandb sync` turns into the
  same input edge (the content digest matches the version the first run logged). A Hub id becomes a reference
  artifact (its URL, nothing downloaded); a local folder no tracked run of ours wrote is named by the run's config.
- `log_files`: other outputs (the evaluation report) as an artifact of their own type.

Nothing private goes into an artifact: absolute paths in the text files (resolved configs, run info, reports) are
cut to their last two parts (`redact_paths`), W&B's own run folders are left out, and metadata holds numbers and
short names only. A W&B failure here is a warning line, never the end of a run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from stagekit.folders import atomic_write_text
from stagekit.sources import looks_local
from stagekit.stage_config import WandbConfig
from stagekit.variables import portable

log = logging.getLogger(__name__)


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def start_run(
    cfg: WandbConfig,
    out_dir: str | Path,
    config: dict[str, Any],
    job_type: str,
    name: str | None = None,
    resume_id: str | None = None,
):
    """A wandb run (or None when disabled or when even offline fails); never raises. With `resume_id`, the run
    of that id continues (created if the server or the offline folder has none). `config` goes to W&B with its
    absolute paths named as in the run's own files (stagekit/variables.py `portable`, relative to `out_dir`): a
    run's config leaves the machine once synced."""
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed; tracking disabled")
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        project=cfg.project,
        entity=cfg.entity,
        name=name or cfg.run_name or out_dir.name,
        config=portable(config, out_dir),
        job_type=job_type,
        tags=cfg.tags,
        group=cfg.group,  # None: wandb reads WANDB_RUN_GROUP
        dir=str(out_dir),
        reinit="finish_previous",
    )
    if resume_id:
        kwargs |= {"id": resume_id, "resume": "allow"}
    for attempt_mode in dict.fromkeys([mode, "offline"]):
        try:
            run = wandb.init(mode=attempt_mode, settings=wandb.Settings(init_timeout=30, silent=True), **kwargs)
            resumed = f", continuing id {resume_id}" if resume_id else ""
            log.info("W&B run %s (%s%s) in %s", run.name, attempt_mode, resumed, out_dir)
            return run
        except Exception as err:  # unreachable server, bad key: fall back, never fail the run
            log.warning("W&B %s init failed (%s)", attempt_mode, str(err).splitlines()[0] if str(err) else err)
    return None


def trainer_report_to(
    cfg: WandbConfig,
    out_dir: Path,
    config: dict[str, Any],
    job_type: str,
    *,
    is_main: bool,
    resume_id: str | None = None,
) -> list[str]:
    """`report_to` for the Trainer: ["wandb"] with the run already started on the main process, else [].
    `resume_id`: the W&B run a resumed stage continues (its checkpoint's record)."""
    if resolve_mode(cfg.mode) == "disabled":
        return []
    if not is_main:
        return ["wandb"]  # transformers' WandbCallback logs on the main process only
    return ["wandb"] if start_run(cfg, out_dir, config, job_type, resume_id=resume_id) is not None else []


def active_run_id() -> str | None:
    """The id of this process's active W&B run, if any (wandb is never imported for it)."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    return getattr(run, "id", None) if run is not None else None


def finish_run(summary: dict[str, Any] | None = None) -> None:
    """Add `summary` to the active run (if any) and close it; never raises."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    try:
        if summary:
            wandb.run.summary.update(summary)
        wandb.finish()
    except Exception as err:
        log.warning("W&B finish failed (%s)", err)


class Tracker:
    """A thin wrapper over a wandb run for code without a Trainer; every call is a no-op when disabled."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as err:  # tracking must not end a run
            log.warning("W&B log failed (%s); continuing without tracking", err)
            self.run = None

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self.run is not None:
            finish_run(summary)
            self.run = None


def run_wandb_config(model_dir: str | Path) -> WandbConfig:
    """The W&B settings of the run that wrote `model_dir` (its resolved_config.yaml), so follow-up jobs such
    as evaluation log into the same project, entity and mode; the defaults when the folder has none."""
    import yaml

    from stagekit.config import _build

    path = Path(model_dir) / "resolved_config.yaml"
    try:
        section = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("wandb") or {}
        cfg = _build(WandbConfig, dict(section), prefix="wandb.")
    except Exception as err:  # a folder from elsewhere, or an older format: track with the defaults
        if path.is_file():
            log.warning("%s: no usable wandb section (%s); W&B defaults apply", path, str(err).splitlines()[0])
        return WandbConfig()
    return cfg


GROUP_FILE = "wandb_group.txt"


def pipeline_group(wandb_sections: list[WandbConfig], folder: Path) -> str | None:
    """The one W&B group of a pipeline's runs, set on every section: the one a section names, else
    WANDB_RUN_GROUP, else the one `folder` stored (a resumed pipeline keeps its group), else a new
    `pipeline-<date>-<time>`; stored in `folder`. None (nothing set or stored) when tracking is disabled in all."""
    if all(resolve_mode(cfg.mode) == "disabled" for cfg in wandb_sections):
        return None
    path = Path(folder) / GROUP_FILE
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except OSError:
        stored = ""
    given = next((cfg.group for cfg in wandb_sections if cfg.group), None)
    group = given or os.environ.get("WANDB_RUN_GROUP") or stored or time.strftime("pipeline-%Y%m%d-%H%M%S")
    for cfg in wandb_sections:
        cfg.group = group
    if group != stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, group + "\n")
    return group


def start_tracking(
    cfg: WandbConfig, out_dir: str | Path, config: dict[str, Any], job_type: str, name: str | None = None
) -> Tracker:
    return Tracker(start_run(cfg, out_dir, config, job_type, name))


REFERENCE_FILE = "wandb_artifact.json"
# Never in a model artifact: W&B's run folders (evaluation writes one beside its report), the reference itself,
# the model card (evaluation and a Hub push rewrite it, and an input is matched by the files' digests), the
# leftovers of atomic writes and locks.
SKIPPED_TOP = ("wandb", "__pycache__", REFERENCE_FILE, "README.md")
SKIPPED_PREFIXES = (".tmp-", ".old-", ".")
# Checkpoint files that are not the model: optimizer and scheduler state, RNG states, and the pickled
# TrainingArguments (which hold the machine's output path and cannot be redacted).
CHECKPOINT_STATE = ("optimizer", "scheduler", "rng_state", "training_args", "scaler")
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt")
VOCABULARY = ("tokenizer", "vocab", "special_tokens_map")  # text that is the vocabulary, never a path
HUB_URL = "https://huggingface.co/"
# An absolute path: a "/" at the start of a word or a quoted/backticked value, two parts or more; it stops at
# whitespace, quotes, brackets and backslashes (JSON's "\n").
ABSOLUTE_PATH = re.compile(r"""(?:^|(?<=[\s"'`(=\[]))(/[^\s"'`()\[\]<>|\\,;]+){2,}""", re.MULTILINE)


def redact_paths(text: str) -> str:
    """`text` with the home folder as `~` and every other absolute path cut to `…/<last two parts>` (e.g.
    `/data/me/outputs/run/model` → `…/run/model`): the run folder and file names stay, the machine's folders go."""

    def cut(match: re.Match) -> str:
        parts = [p for p in match.group(0).split("/") if p]
        return "…/" + "/".join(parts[-2:])

    home = str(Path.home())
    if len(Path(home).parts) > 1:  # a user's folder name is theirs alone: ~ in its place
        text = re.sub(re.escape(home) + r"(?=/|\b)", "~", text)
    return ABSOLUTE_PATH.sub(cut, text)


def artifact_name(text: str) -> str:
    """A valid W&B artifact name for `text` (letters, digits, `-`, `_`, `.`)."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-.") or "model"


def artifact_files(folder: Path, *, checkpoint: bool = False) -> list[str]:
    """The files under `folder` an artifact of it holds (relative POSIX paths, sorted); with `checkpoint`, the
    model files of a Trainer checkpoint, without optimizer, scheduler and RNG state."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if rel.parts[0] in SKIPPED_TOP or any(part.startswith(SKIPPED_PREFIXES) for part in rel.parts):
            continue
        if path.suffix == ".lock" or (checkpoint and rel.name.startswith(CHECKPOINT_STATE)):
            continue
        files.append(rel.as_posix())
    return files


def build_artifact(
    name: str, kind: str, folder: Path, files: list[str], metadata: dict[str, Any], staging: Path
) -> Any:
    """A draft `wandb.Artifact` of `files` under `folder`; text files go in through a redacted copy under
    `staging` (`redact_paths`). W&B copies each file when it is added, so `staging` may go afterwards."""
    import wandb

    artifact = wandb.Artifact(name, type=kind, metadata=metadata)
    for rel in files:
        source = folder / rel
        if source.suffix in TEXT_SUFFIXES and not source.name.startswith(VOCABULARY):
            text = source.read_text(encoding="utf-8", errors="replace")
            redacted = redact_paths(text)
            if redacted != text:
                source = staging / rel
                source.parent.mkdir(parents=True, exist_ok=True)
                source.write_text(redacted, encoding="utf-8")
        artifact.add_file(str(source), name=rel)
    return artifact


def describe(metrics: dict[str, Any]) -> dict[str, Any]:
    """Artifact metadata from a metrics dict: numbers, flags, short names and lists of numbers; never a path."""
    kept: dict[str, Any] = {}
    for k, v in metrics.items():
        scalar = isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 80 and "/" not in v)
        numbers = isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
        if (scalar or numbers) and not (isinstance(v, float) and v != v):  # NaN is no JSON
            kept[k] = v
    return kept


def active_run() -> Any:
    """This process's W&B run, or None (wandb is never imported for it)."""
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def _warn(what: str, err: Exception) -> None:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    log.warning("W&B: %s failed (%s); the run goes on without it", what, first)


def log_files(
    folder: Path, name: str, kind: str, metadata: dict[str, Any], aliases: list[str], files: list[str] | None = None
) -> dict[str, Any] | None:
    """Log `files` of `folder` (default: `artifact_files`) as an artifact of type `kind` to the active run. Returns
    the reference (name, type, alias, run, project, entity, files, metadata), or None (no run, or W&B failed:
    one warning line)."""
    run = active_run()
    if run is None:
        return None
    try:
        files = artifact_files(folder) if files is None else files
        name = artifact_name(name)
        with tempfile.TemporaryDirectory() as staging:
            artifact = build_artifact(name, kind, folder, files, metadata, Path(staging))
            run.log_artifact(artifact, aliases=aliases)
        reference = {"name": name, "type": kind, "alias": aliases[0], "digest": artifact.digest, "run_id": run.id,
                     "project": run.project, "entity": run.entity or None, "files": files, "metadata": metadata}  # fmt: skip
        log.info("W&B: %s artifact %s:%s (%d files)%s", kind, name, aliases[0], len(files),
                 ", staged for `wandb sync`" if run.offline else "")  # fmt: skip
        return reference
    except Exception as err:  # tracking never ends a run
        _warn(f"logging {'/'.join(folder.parts[-2:])}/ as a {kind} artifact", err)
        return None


def log_model(folder: Path, name: str, log_when: str, metadata: dict[str, Any]) -> None:
    """Log the finished model `folder` as an artifact of type model named `name` (the run folder's name) and write
    its reference into the folder (`REFERENCE_FILE`); nothing when `log_when` is "never" or no run is active."""
    if log_when == "never" or active_run() is None:
        return
    reference = log_files(folder, name, "model", metadata, [f"run-{active_run().id}"])
    if reference is not None:
        atomic_write_text(folder / REFERENCE_FILE, json.dumps(reference, indent=2))


def read_reference(folder: str | Path) -> dict[str, Any] | None:
    """The artifact reference a tracked run of ours left in `folder`, or None."""
    try:
        data = json.loads((Path(folder) / REFERENCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("name") and data.get("files") else None


def qualified(reference: dict[str, Any]) -> str:
    """`entity/project/name:alias` (without the entity when the run had none, i.e. offline)."""
    path = "/".join(p for p in (reference.get("entity"), reference.get("project"), reference["name"]) if p)
    return f"{path}:{reference['alias']}"


def use_model(model: str | Path) -> None:
    """Declare `model` (a model folder or a Hub id) an input of the active run; nothing without one. A folder
    with our reference → that artifact; a Hub id → a reference artifact of its URL; another folder → named by the
    run's config only (one info line). A W&B failure is one warning line."""
    run = active_run()
    if run is None:
        return
    folder = Path(str(model))
    try:
        reference = read_reference(folder)
        if reference is not None:
            _use(run, qualified(reference), lambda staging: rebuilt(reference, folder, staging))
            log.info("W&B: input %s (the artifact of %s)", qualified(reference), "/".join(folder.parts[-2:]))
        elif folder.is_dir() or looks_local(str(model)):
            log.info("W&B: %s was not logged by a tracked run of ours: the run's config names it", folder)
        else:
            _use(run, None, lambda staging: hub_reference(str(model)))
            log.info("W&B: input %s%s (a reference artifact)", HUB_URL, model)
    except Exception as err:  # tracking never ends a run
        _warn(f"declaring {'/'.join(folder.parts[-2:]) or model} as the run's input", err)


def rebuilt(reference: dict[str, Any], folder: Path, staging: Path) -> Any:
    """The artifact `reference` recorded, built again from `folder`; a warning line when its files changed since
    (W&B then records the input as a new version of the artifact)."""
    artifact = build_artifact(reference["name"], reference.get("type", "model"), folder, reference["files"],
                              reference.get("metadata") or {}, staging)  # fmt: skip
    if reference.get("digest") and artifact.digest != reference["digest"]:
        log.warning("W&B: %s changed since its artifact was logged; the input is a new version of %s", folder,
                    reference["name"])  # fmt: skip
    return artifact


def hub_reference(model_id: str) -> Any:
    """A reference artifact of type model that points at a Hub model's page (nothing is downloaded)."""
    import wandb

    artifact = wandb.Artifact(artifact_name(f"hf-{model_id}"), type="model", metadata={"hub_id": model_id})
    artifact.add_reference(HUB_URL + model_id, name=model_id.rsplit("/", 1)[-1], checksum=False)
    return artifact


def _use(run: Any, ref: str | None, draft) -> None:
    """Online: `use_artifact(ref)`, or the rebuilt draft when the reference does not resolve (e.g. logged offline
    and not synced yet). Offline the SDK refuses `use_artifact`; the draft logged with use-after-commit records
    the same input, which `wandb sync` applies."""
    if not run.offline and ref is not None:
        try:
            run.use_artifact(ref)
            return
        except Exception as err:
            log.info("W&B: %s does not resolve (%s); declaring the rebuilt artifact", ref, str(err).splitlines()[0])
    with tempfile.TemporaryDirectory() as staging:
        artifact = draft(Path(staging))
        if run.offline:
            run._log_artifact(artifact, use_after_commit=True)
        else:
            run.use_artifact(artifact)


def add_checkpoint_artifacts(trainer: Any, log_when: str, name: str, stage: str) -> None:
    """With `wandb.log_model: checkpoint` and a run active, `trainer` logs each checkpoint (`CheckpointArtifacts`)."""
    if log_when == "checkpoint" and active_run() is not None:
        trainer.add_callback(CheckpointArtifacts(name, {"stage": stage}))


class CheckpointArtifacts(TrainerCallback):
    """`wandb.log_model: checkpoint`: each checkpoint's model files as a version of the run's model artifact,
    aliased `step-N` (resuming reads the local checkpoints; their optimizer state is not sent)."""

    def __init__(self, name: str, metadata: dict[str, Any] | None = None) -> None:
        self.name, self.metadata = name, metadata or {}

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and active_run() is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            evals = {k: v for h in state.log_history if h.get("step") == state.global_step for k, v in h.items()}
            metadata = self.metadata | describe(evals) | {"step": state.global_step}
            log_files(folder, self.name, "model", metadata, [f"step-{state.global_step}"],
                      artifact_files(folder, checkpoint=True))  # fmt: skip
        return control
