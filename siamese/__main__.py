"""`python -m siamese --config configs/siamese/<name>.yaml [--resume] [key=value ...]` (also under
`torchrun --nproc_per_node=N -m siamese ...`)."""

from siamese.train import SiameseStage
from stagekit.stage import stage_command

main, cli = stage_command(SiameseStage)

if __name__ == "__main__":
    cli()
