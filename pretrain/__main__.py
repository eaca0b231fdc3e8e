"""`python -m pretrain --config configs/pretrain/cpu-small.yaml [--resume] [key=value ...]`

Corpus → tokenizer → packed blocks (cached) → MLM training → outputs/<run_name>/model/. The same command
runs on several processes: `torchrun --nproc_per_node=N -m pretrain --config ...`.
"""

from pretrain.train import PretrainStage
from stagekit.stage import stage_command

main, cli = stage_command(PretrainStage)

if __name__ == "__main__":
    cli()
