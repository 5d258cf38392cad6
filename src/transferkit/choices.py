"""The command line's vocabulary, without torch: the allowed values of each setting
and ``FitConfig``'s defaults.

Why a module of its own: the modules that own these values (``config``, ``compute``,
``freezing``, ``heads``, ``export``) import torch, and ``transferkit --help``, ``--version``
or a mistyped flag must answer before torch could even be imported (~2-3 s). The tuples
are spelt here and tests/test_cli.py keeps them equal to their owners'; the defaults
are not copied at all but read from the owners' source text (``fit_defaults``), so a
default changed in ``FitConfig`` changes ``--help`` with it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

STRATEGIES = ("auto", "feature-extract", "fine-tune")  # config.STRATEGIES (built in)
DEVICES = ("cpu", "cuda", "auto")  # config.DEVICES
PRECISIONS = ("auto", "fp32", "bf16")  # compute.PRECISIONS
BN_POLICIES = ("frozen", "train")  # freezing.BN_POLICIES
POOLINGS = ("avg", "max", "flatten")  # heads.POOLINGS
SELECTIONS = ("auto", "cv", "holdout")  # FitConfig.selection: how the head is chosen
CLASS_WEIGHTS = ("balanced",)  # FitConfig.class_weight: None (every image counts once)
PREDICT_FORMATS = ("table", "json", "csv")  # reports.text.PREDICT_FORMATS
EXPORT_FORMATS, EXPORT_OPSET = ("onnx", "torchscript"), 17  # export.FORMATS, DEFAULT_OPSET

_PACKAGE = Path(__file__).resolve().parent


def _literal_defaults(module: str, class_name: str) -> dict:
    """``{field: default}`` of a dataclass's fields whose default is a literal, read
    from the module's source without importing it."""
    tree = ast.parse((_PACKAGE / module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                stmt.target.id: ast.literal_eval(stmt.value)
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and stmt.value is not None
                and _is_literal(stmt.value)
            }
    raise LookupError(f"no class {class_name} in {module}")  # a refactoring broke this


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True


@functools.cache
def fit_defaults() -> dict:
    """``FitConfig``'s literal defaults, plus its head's (``pooling``, ``hidden``,
    ``dropout``), by field name."""
    return {
        **_literal_defaults("config.py", "FitConfig"),
        **_literal_defaults("heads.py", "HeadConfig"),
    }
