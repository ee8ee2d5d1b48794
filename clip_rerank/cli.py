"""`clip-rerank fit|validate|test -c configs/clip_rerank/shapes.yaml`: the CLIP stage's LightningCLI."""

from clip_rerank.lightning import CLIPModule
from imagetext.training import run_stage_cli


def main(args: list[str] | None = None) -> None:
    run_stage_cli("clip-rerank", "clip_rerank", CLIPModule, args=args)
