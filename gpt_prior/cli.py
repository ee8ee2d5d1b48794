"""`gpt-prior fit|validate|test -c configs/gpt_prior/shapes.yaml`: the GPT prior stage's LightningCLI."""

from gpt_prior.data import CodeShardDataModule
from gpt_prior.lightning import GPTPriorModule
from imagetext.training import run_stage_cli


def main(args: list[str] | None = None) -> None:
    run_stage_cli(
        "gpt-prior", "gpt_prior", GPTPriorModule, CodeShardDataModule, args=args, linked={"data.codes": "model.codes"}
    )
