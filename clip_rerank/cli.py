"""`clip-rerank`: the stage's LightningCLI (fit / validate / test with YAML configs)."""
import sys


def main(argv: list[str] | None = None) -> None:
    sys.exit("clip-rerank: this stage is not built yet")
