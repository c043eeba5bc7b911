"""Borrowing definitions from an installed package's source, without importing their module.

An engine's staging code often lives in modules whose import chain needs the
engine's whole dependency tree (web servers, serialisers, ...).  The functions
and methods the adapter drives are compiled straight from the installed source
file instead, each into a namespace holding exactly the module globals it
reads.  File names and line numbers are kept, so tracebacks point into the
engine's own source.

Invariant upheld: a borrowed body never runs against a global the adapter did
not decide to provide.  :func:`free_globals` computes the names a definition
reads (``symtable``; annotations excluded, they are never evaluated) and
:func:`borrow` reports every one the namespace lacks, so a changed body fails
the adapter's API check instead of raising ``NameError`` mid-test.
"""

from __future__ import annotations

import __future__
import ast
import builtins
import copy
import symtable
from pathlib import Path
from typing import Any, Optional, Sequence

_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def find_definition(tree: ast.Module, qualname: str) -> Optional[ast.stmt]:
    """The ``def``/``class`` node named by a dotted path (``Class.method``) in ``tree``, or ``None``."""
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, _DEFINITIONS) and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node


def free_globals(node: ast.stmt) -> set[str]:
    """Global names a definition reads at run time (annotations excluded: never evaluated)."""
    bare = copy.deepcopy(node)
    for sub in ast.walk(bare):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sub.returns = None
            every = sub.args.posonlyargs + sub.args.args + sub.args.kwonlyargs + [sub.args.vararg, sub.args.kwarg]
            for arg in every:
                if arg is not None:
                    arg.annotation = None
        elif isinstance(sub, ast.AnnAssign):
            sub.annotation = ast.Constant(None)
    names: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if symbol.is_global() and symbol.is_referenced():
                names.add(symbol.get_name())
        for child in table.get_children():
            walk(child)

    walk(symtable.symtable(ast.unparse(bare), "<borrowed>", "exec"))
    return names - set(dir(builtins)) - {bare.name}


def borrow(root: Path, relpath: str, qualnames: Sequence[str], namespace: dict) -> tuple[dict[str, Any], list[str]]:
    """Compile ``qualnames`` from ``root/relpath`` into ``namespace`` (their module globals).

    Returns the objects by qualified name and a list of problems (missing
    definitions, globals the namespace lacks).  Methods do not become globals;
    top-level definitions do, as in the real module, so borrowed siblings can
    call each other.
    """
    path = root / relpath
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, Any] = {}
    problems: list[str] = []
    siblings = {q for q in qualnames if "." not in q}
    for qualname in qualnames:
        node = find_definition(tree, qualname)
        if node is None:
            problems.append(f"{relpath}: {qualname} no longer exists")
            continue
        missing = sorted(free_globals(node) - set(namespace) - siblings)
        if missing:
            problems.append(f"{relpath}: {qualname} now reads globals the adapter does not provide: {', '.join(missing)}")
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, namespace)
        found[qualname] = namespace[node.name] if "." not in qualname else namespace.pop(node.name)
    return found, problems
