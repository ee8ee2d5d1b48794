"""Writing the tiny YAML configs the stage tests run `fit` with."""
import copy
from pathlib import Path

import yaml


def write_stage_config(base: dict, folder: Path, name: str = "tiny.yaml", **overrides) -> Path:
    """Write `base` to folder/name, with its CSV logs under `folder` and dotted-key overrides
    (`**{"data.image_size": 17}`) applied."""
    config = copy.deepcopy(base)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(folder)
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(config))
    return path
