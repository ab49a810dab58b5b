"""The one build setting pyproject.toml cannot say: migrations/ (top level in the repository, so
the SQL is reviewed as SQL) ships inside the package as labeval.migrations. Every other setting
is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["labeval", "labeval.*", "scoring", "scoring.*"]), "labeval.migrations"],
    package_dir={"labeval.migrations": "migrations"},
)
