from setuptools import find_packages, setup

setup(
    name="docker-dir",
    version="0.1.0",
    description="Keep Docker images as plain directories that build systems can track",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    scripts=["bin/docker-dir-save", "bin/docker-dir-id", "bin/docker-dir-exec"],
    install_requires=["plumbum>=1.8"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "snakemake>=8", "datalad>=1.0", "datalad-container>=1.2"],
        "bench": ["datalad-container>=1.2", "matplotlib>=3.5"],
    },
)
