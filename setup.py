"""Houlsby adapters in a frozen BERT, trained and served by a TFX pipeline."""
from setuptools import find_packages, setup

setup(
    name="adapter-bert-tfx",
    version="0.1.0",
    description="TFX pipeline for parameter-efficient transfer learning with Houlsby adapters in a frozen BERT on GLUE",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*", "modules", "modules.*", "kubeflow", "kubeflow.*"]),
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras~=2.16.0",
        "tensorflow-text~=2.16.1",
        "tensorflow-transform==1.16.0",
        "tensorflow-model-analysis==0.47.1",
        "apache-beam[gcp]==2.60.0",
        "transformers>=4.40,<4.58",
        "safetensors",
        "tensorflow-serving-api==2.16.1",
    ],
    extras_require={"dev": ["pytest", "pytest-xdist", "scikit-learn", "scipy", "matplotlib"]},
)
