"""`vqgan`: the stage's LightningCLI (fit / validate / test with YAML configs)."""
import sys


def main(argv: list[str] | None = None) -> None:
    sys.exit("vqgan: this stage is not built yet")
