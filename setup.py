# The C core is compiled by cffi's out-of-line API mode; setup() only needs to know where the builder is.
from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
