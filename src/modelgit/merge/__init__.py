"""Merging (layer ``merge/``): methods as pure tensor functions in a registry, the streaming
engine, mergekit-style recipes and PEFT adapters."""

from . import methods  # noqa: F401  (registers every method)
from .base import METHODS, MergeInputs, MergeMethod, get_method, register

__all__ = ["METHODS", "MergeInputs", "MergeMethod", "get_method", "register"]
