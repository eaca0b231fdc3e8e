"""stagekit: what both stages are built from — the config schema and CLI, the stage lifecycle and the
Trainer stack, data sources, checkpoints, run folders, tracking.

A name of its own, not a generic one like `common`, so that a user's `common.py` or another package's module
of that name cannot shadow it; tests/stagekit mirrors it under the same name (a test started as a script puts
tests/ first on sys.path, where a `tests/common` would hide a package `common`).
"""

import os as _os
import sys as _sys

# Ops Apple's MPS backend lacks run on the CPU instead of failing (stagekit/device.py). torch reads the variable
# when it is imported, so it is set here, before this project's modules import torch; a user's value wins.
_preset = _os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
_os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
# Whether torch saw the fallback on: it did if it is imported after this line, or if the user had set it.
MPS_FALLBACK_AT_TORCH_IMPORT = (
    _preset if "torch" in _sys.modules else _os.environ["PYTORCH_ENABLE_MPS_FALLBACK"]
) == "1"
