"""Packaging for the online deep learning pipelines.

This file is also what Beam stages to remote workers with ``--setup_file``,
so it installs only what the pipelines import at run time.
"""

import setuptools

BEAM_VERSION = "2.77.0"

REQUIRED_PACKAGES = [
    f"apache-beam=={BEAM_VERSION}",
    "torch>=2.4",
    "pyarrow>=14",
    "tensorflow-metadata>=1.15",
    "river>=0.22",
    "safetensors>=0.4",
    "matplotlib>=3.8",
    "pyyaml>=6",
]

TEST_PACKAGES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
]

setuptools.setup(
    name="beam-online-dl",
    version="0.1.0",
    description=(
        "Portable Apache Beam pipelines that train a PyTorch model inside the "
        "stream and hot-swap it into inference"
    ),
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["pipelines*", "transforms*", "ml*", "runners*"]
    ),
    package_data={"runners": ["flink/*.sh", "*.sh"]},
    install_requires=REQUIRED_PACKAGES,
    extras_require={"test": TEST_PACKAGES},
    license="Apache-2.0",
)
