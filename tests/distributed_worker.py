"""One rank of a two-process test: run a stage's real entry point under torchrun, then save this rank's
parameters (the encoder and, for the siamese stage, the NLI head) so the test can compare the ranks.

`python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.distributed_worker STAGE OUT -- ARGV`

With `BERT_TEST_FAIL=RANK:STEP` in the environment, rank RANK raises a RuntimeError in its training step after
STEP optimizer steps: a rank that fails alone (out of memory, a bad batch), for the tests of stagekit/distributed.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    stage, out, _, *argv = sys.argv[1:]
    import importlib

    from stagekit import stage as stage_module
    from stagekit.cli import run_cli

    trainers = []
    command = importlib.import_module(f"{stage}.__main__")
    real_run = stage_module.run_stage

    def spy(*args, **kwargs):
        result = real_run(*args, **kwargs)
        trainers.append(result.trainer)
        return result

    stage_module.run_stage = spy
    if os.environ.get("BERT_TEST_FAIL"):
        fail_rank, fail_step = (int(x) for x in os.environ["BERT_TEST_FAIL"].split(":"))
        _fail_at(fail_rank, fail_step)
    code = run_cli(command.main, argv)  # as the real command: a failure is reported to the other ranks
    if code:
        sys.exit(code)
    trainer = trainers[0]
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    head = getattr(trainer, "classifier", None)
    if head is not None:
        tensors |= {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    save_file(_untied(tensors), str(Path(out) / f"rank{rank}.safetensors"))


def _fail_at(rank: int, step: int) -> None:
    from transformers import Trainer

    real_step = Trainer.training_step

    def failing_step(self, *args, **kwargs):
        if self.args.process_index == rank and self.state.global_step >= step:
            raise RuntimeError(f"injected failure at step {self.state.global_step}")
        return real_step(self, *args, **kwargs)

    Trainer.training_step = failing_step


def _untied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): copy them apart."""
    return {k: v.clone() for k, v in tensors.items()}


if __name__ == "__main__":
    main()
