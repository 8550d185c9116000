"""Merging (layer ``merge/``): methods as pure tensor functions in a registry."""

from .methods import METHODS, MergeMethod, get_method, register

__all__ = ["METHODS", "MergeMethod", "get_method", "register"]
