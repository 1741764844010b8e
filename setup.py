from setuptools import find_packages, setup

setup(
    name="megatron_tsp",
    version="0.1.0",
    description="Tensor and Sequence Parallelism (TSP) for Megatron-Core LLM pretraining",
    packages=find_packages(include=["megatron_tsp", "megatron_tsp.*"]),
    package_data={"megatron_tsp": ["data/*.gz", "data/*.md", "data/tokenizer/*"]},
    python_requires=">=3.11",
    # megatron-core==0.19.2 is installed by scripts/setup.sh (it needs --ignore-requires-python
    # on Python 3.11, which a requirement here cannot express).
    install_requires=[
        "torch==2.13.0",
        # megatron.core imports triton; torch's CPU wheel does not bring it, its CUDA wheels pin
        # this release
        "triton==3.7.1; platform_system == 'Linux'",
        "numpy<2.5",
        "packaging>=24.2",
        "safetensors",
        "einops",
        "psutil",
        "six",
        "regex",
        "pyyaml",
        "pydantic",
        "transformers>=4.51",
        "tensorboard",
        "wandb",
        "matplotlib",  # benchmarks/compare_parallelism.py plots
    ],
    extras_require={
        "test": ["pytest"],
    },
)
