from setuptools import find_packages, setup

# torch and torchvision are pinned as a pair: torchvision's compiled ops only load against the torch
# build they were made for, and the CPU-only torch wheel some machines keep on disk cannot load them
# at all ("operator torchvision::nms does not exist"). open_clip imports torchvision, so the pair
# decides whether the install works.
TORCH_PAIR = ["torch==2.14.1", "torchvision==0.29.2"]

setup(
    name="vqgan-clip-toolkit",
    version="0.1.0",
    description="Text-to-image in the DALL·E 1 / VQGAN-CLIP lineage: VQGAN, GPT prior, CLIP rerank, CLIP-guided latent optimisation",
    python_requires=">=3.10",
    packages=find_packages(include=["imagetext*", "vqgan*", "gpt_prior*", "clip_rerank*", "optimize*", "vqgan_clip*"]),
    # the stage configs and small open_clip JSONs (imagetext/configs/STAGE/) and the shipped models
    # (imagetext/shipped/STAGE/NAME.safetensors + NAME.md) travel with the package
    package_data={"imagetext.configs": ["*/*.yaml", "*/*.json"], "imagetext.shipped": ["*/*.safetensors", "*/*.md"]},
    install_requires=TORCH_PAIR
    + [
        "pytorch-lightning>=2.4,<3",
        "einops>=0.8",
        "open_clip_torch>=2.24",
        "tokenizers>=0.19",
        "omegaconf>=2.3",
        "jsonargparse[signatures,omegaconf]>=4.27",
        "webdataset>=0.2.86",
        "safetensors>=0.4",
        "pillow>=10",
        "numpy>=1.24",
        "tqdm>=4.60",
        "scipy>=1.10",  # connected components for the shapes parser
        "lpips>=0.1.4",  # LPIPS linear heads for the VQGAN perceptual loss
    ],
    # setuptools>=70.1 builds a wheel without the `wheel` package (the install test builds one offline)
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "setuptools>=70.1"]},
    entry_points={
        "console_scripts": [
            "vqgan-clip=vqgan_clip.cli:main",
            "vqgan=vqgan.cli:main",
            "gpt-prior=gpt_prior.cli:main",
            "clip-rerank=clip_rerank.cli:main",
        ]
    },
)
