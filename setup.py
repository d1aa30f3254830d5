"""Builds the native telemetry core (agent._native) through cffi's out-of-line API mode.

Everything else about the distribution lives in pyproject.toml.
"""
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
