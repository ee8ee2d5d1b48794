"""`vqgan fit|validate|test -c configs/vqgan/shapes.yaml`: the VQGAN stage's LightningCLI."""

from imagetext.training import run_stage_cli
from vqgan.lightning import VQGANModule


def main(args: list[str] | None = None) -> None:
    run_stage_cli("vqgan", "vqgan", VQGANModule, args=args)
