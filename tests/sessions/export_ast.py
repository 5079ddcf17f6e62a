"""What an exported script may contain: only the names, attributes, calls and imports of the template."""

from __future__ import annotations

import ast


def names_in(source: str) -> set[str]:
    """Every identifier `source` uses as code: names, attributes, imports, definitions, arguments."""
    seen: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            seen.add(node.id)
        elif isinstance(node, ast.Attribute):
            seen.add("." + node.attr)
        elif isinstance(node, ast.Import):
            seen.update("import " + alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            seen.update(f"from {node.module} import {alias.name}" for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            seen.add("def " + node.name)
        elif isinstance(node, ast.Lambda):
            seen.add("lambda")
        elif isinstance(node, ast.arg):
            seen.add("arg " + node.arg)
        elif isinstance(node, ast.keyword) and node.arg is not None:
            seen.add("keyword " + node.arg)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            seen.add("global")
    return seen


def template_names(reference_source: str) -> set[str]:
    """The reference export's identifiers plus every intervention class and its fields."""
    import dataclasses

    from mechscope.engine import INTERVENTION_TYPES, Metric

    allowed = names_in(reference_source)
    for cls in (*INTERVENTION_TYPES, Metric):
        allowed.add(cls.__name__)
        allowed.add(f"from mechscope.engine import {cls.__name__}")
        allowed.update("keyword " + f.name for f in dataclasses.fields(cls))
    return allowed


def foreign_names(source: str, allowed: set[str]) -> set[str]:
    return names_in(source) - allowed
