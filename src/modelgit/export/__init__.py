"""A release leaves the repository: a plain Hugging Face directory (merged, or base + the
adapter library as PEFT adapters) and, for encoders and classifiers, a checked ONNX graph.

    from modelgit.export import export_release
    export_release("path/to/repo", "out/v2", rev="v2", merged=True)   # one model
    export_release("path/to/repo", "out/v2-lib", rev="v2")            # base + adapters/<name>/

``modelgit export REV -o DIR [--merged] [--onnx] [--adapters NAME...]`` is the command.
"""

from __future__ import annotations

from .onnx import (DEFAULT_TOLERANCE, OnnxCheck, OnnxCheckError, export_onnx, onnx_task,
                   require_onnx)
from .release import EXPORT_RECORD, ExportResult, export_release

__all__ = ["DEFAULT_TOLERANCE", "EXPORT_RECORD", "ExportResult", "OnnxCheck", "OnnxCheckError",
           "export_onnx", "export_release", "onnx_task", "require_onnx"]
