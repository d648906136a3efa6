"""Exports of a registered model version to files that run without Graft: ONNX, a
TorchScript module, or a Triton Inference Server model repository, each with the recipe
that reproduces Predict's preprocessing (docs/EXPORTS.md).

The work runs in a worker's advisor lane (a task of kind EXPORT: graft.export.exporter,
which imports torch and onnx); the API reads only `layout` (torch-free) to stream the files
the worker wrote under the shared artifacts folder.
"""

from __future__ import annotations

from graft.export.layout import (
    FORMATS,
    ExportedFile,
    ExportRecord,
    export_folder,
    exports_root,
)

__all__ = ["FORMATS", "ExportRecord", "ExportedFile", "export_folder", "exports_root"]
