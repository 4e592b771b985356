"""Builds hanet._fastprobe from hanet/_fastprobe.pyx; all other metadata is in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("hanet._fastprobe", ["hanet/_fastprobe.pyx"], depends=["hanet/_fastprobe.h"],
                   extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
