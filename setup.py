"""tf_codistill: codistillation (Anil et al., 2018) for TensorFlow / tf_keras."""

import glob
import os

from setuptools import find_packages
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def shipped_data_files():
    """Ships gin/ and testdata/ as <prefix>/share/tf_codistill/{gin,testdata}/.

    See gin_utils.gin_search_paths and datasets/shipped.py: the tiny configs
    read testdata/ (small files: a text corpus, Criteo lines).
    """
    out = {}
    paths = glob.glob(os.path.join("gin", "**", "*.gin"), recursive=True)
    paths += [p for p in glob.glob(os.path.join("testdata", "**", "*"), recursive=True)]
    for path in sorted(p for p in paths if os.path.isfile(p)):
        out.setdefault(os.path.join("share", "tf_codistill", os.path.dirname(path)), []).append(
            path
        )
    return sorted(out.items())


setup(
    name="tf_codistill",
    version="0.1.0",
    description="Codistillation (online distillation between data-parallel groups) for tf_keras",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The programs are tf_codistill.programs (binaries/*.py are shims for a
    # checkout): a package of its own, mapped from another directory, was
    # missing from editable installs.
    packages=find_packages(include=["tf_codistill", "tf_codistill.*"]),
    data_files=shipped_data_files(),
    install_requires=[
        # tf-keras must match TensorFlow's minor version.
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        # TF 2.21 no longer pulls TensorBoard in; tf.summary needs it.
        "tensorboard>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        # tensorflow-datasets imports it lazily but declares it only for Python < 3.9.
        "importlib_resources",
        "gin-config>=0.5,<0.6",
        "absl-py>=2.0",
        "numpy",
        # The TFDS builders use etils.epath directly (it comes with tensorflow-datasets).
        "etils",
    ],
    extras_require={
        # matplotlib: tests/test_reproduce.py renders the study's plots; mnist1d:
        # the MNIST-1D workload's generator (tests/test_mnist1d.py); pytest-xdist:
        # the README's test command runs the unit tests beside the process tests.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff==0.17.5",
            "matplotlib>=3.8",
            "mnist1d>=0.0.2,<0.1",
        ],
        "plots": ["matplotlib>=3.8"],
        # The MNIST-1D workload (tf_codistill.datasets.mnist1d) generates its data with it.
        "mnist1d": ["mnist1d>=0.0.2,<0.1"],
        # binaries/launch_ray.py (tf_codistill.ray_launcher; nothing else imports
        # Ray). Only the version tested here: Ray Train's APIs move between
        # minor releases.
        "ray": ["ray[train]>=2.60,<2.61"],
    },
    entry_points={
        "console_scripts": [
            "tf-codistill-train=tf_codistill.programs.train:run",
            "tf-codistill-launch-local=tf_codistill.programs.launch_local:run",
            "tf-codistill-launch-ray=tf_codistill.programs.launch_ray:run",
            "tf-codistill-evaluate=tf_codistill.programs.evaluate:run",
            "tf-codistill-churn=tf_codistill.programs.churn:run",
        ]
    },
)
