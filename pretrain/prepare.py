"""`python -m pretrain.prepare --config configs/pretrain/cpu-small.yaml [key=value ...]`

Build (or find) the packed-blocks cache of a pretraining config without training: e.g. prepare on a
CPU machine, then train elsewhere with the same config and data.cache_dir. Prints the cache folder,
its stats and the seconds per preparation stage of its build (build_seconds.json in the cache).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets  # noqa: F401 - loaded here, so wall_s below times the preparation, not library imports

from pretrain.blocks import cache_key, prepare_data
from pretrain.config import PretrainConfig
from stagekit.cli import config_parser, parse_config, run_cli


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Prepare the data of a config; returns {"cache": folder, "built": bool (False: found), "wall_s": seconds
    prepare_data took (imports excluded), "stats": ..., "seconds": per stage of the build}."""
    parser = config_parser(
        "python -m pretrain.prepare",
        "Tokenize and pack the pretraining data of a config, without training.",
        PretrainConfig,
        resume=False,
    )
    cfg, _ = parse_config(parser, PretrainConfig, argv)  # fails in one line before any work
    folder = Path(cfg.data.cache_dir) / cache_key(cfg)
    built = not (folder / "stats.json").is_file()
    start = time.perf_counter()
    data = prepare_data(cfg)
    wall = time.perf_counter() - start
    seconds = json.loads((folder / "build_seconds.json").read_text())
    result = {"cache": str(folder), "built": built, "wall_s": wall, "stats": data.stats, "seconds": seconds}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
