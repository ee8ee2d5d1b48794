"""`gpt-prior`: the stage's LightningCLI (fit / validate / test with YAML configs)."""
import sys


def main(argv: list[str] | None = None) -> None:
    sys.exit("gpt-prior: this stage is not built yet")
