"""Install the fsclip core package plus the repository's datasets/ and trainers/ folders.

``datasets/`` installs as ``fsclip.datasets`` and ``trainers/`` as ``fsclip.trainers``, so no
top-level module named ``datasets`` (HuggingFace's) is shadowed in site-packages.
"""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements():
    with open(os.path.join(HERE, "requirements.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


setup(
    name="fsclip",
    version="0.1.0",
    description="Few-shot CLIP adaptation toolkit in the Dassl/CoOp style",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["fsclip", "fsclip.*"]) + ["fsclip.datasets", "fsclip.trainers"],
    package_dir={"fsclip.datasets": "datasets", "fsclip.trainers": "trainers"},
    package_data={"fsclip": ["template_pool.json"],
                  "fsclip.kit": ["weights/*.pt", "weights/*.md", "prompts/*.json"],
                  "fsclip.results": ["reference/*.json"]},
    install_requires=read_requirements(),
    extras_require={
        # what the tests exercise beyond the core: the Slurm path of fsclip-sweep (through
        # submitit's local executor), the plots of fsclip-results, and an independent check
        # of the linear probe's logistic regression (scikit-learn); the analysis figures of
        # fsclip-explain (grad-cam, captum, pycocotools) and the OpenCLIP backbones (open_clip;
        # transformers for the Hugging Face tokenizers of SigLIP/SigLIP2)
        "test": ["pytest>=7", "submitit>=1.5", "matplotlib>=3.7", "scikit-learn>=1.1",
                 "grad-cam>=1.5", "captum>=0.7", "pycocotools>=2.0.7", "open-clip-torch>=3.0",
                 "transformers>=4.40"],
        # fsclip-explain: Smooth Grad-CAM++ (grad-cam), Shapley values (captum), part masks
        # (pycocotools) and the panels (matplotlib)
        "explain": ["grad-cam>=1.5", "captum>=0.7", "pycocotools>=2.0.7", "matplotlib>=3.7"],
        # backbones beyond OpenAI's CLIP: OpenCLIP, SigLIP/SigLIP2 (their Hugging Face tokenizers:
        # transformers, sentencepiece), EVA-CLIP, MetaCLIP
        "openclip": ["open-clip-torch>=3.0", "transformers>=4.40", "sentencepiece"],
        "tensorboard": ["tensorboard"],
        "plots": ["matplotlib>=3.7"],
        "slurm": ["submitit>=1.5"],
    },
    entry_points={
        "console_scripts": [
            "fsclip-train=fsclip.cli:main",
            "fsclip-parse=fsclip.results:main",
            "fsclip-results=fsclip.results.cli:main",
            "fsclip-sweep=fsclip.sweep.cli:main",
            "fsclip-explain=fsclip.explain.cli:main",
        ]
    },
)
