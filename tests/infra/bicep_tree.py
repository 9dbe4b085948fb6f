"""Small helpers over pycep-parser trees of Bicep files: walk them, unwrap loops and
conditions, name property-accessor chains, and follow a value through variables, parameters
(to every caller) and module outputs to where it comes from.

pycep represents an identifier and a string literal the same way (a Python str); a string is
taken as an identifier when the file declares a symbol of that name.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLE_DEFINITIONS = "Microsoft.Authorization/roleDefinitions"
VAULTS = "Microsoft.KeyVault/vaults"
ROLE_ASSIGNMENTS = "Microsoft.Authorization/roleAssignments"

Tree = dict[str, Any]


def walk(node: Any) -> Iterator[Any]:
    """Every node of a pycep tree, depth first."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def unwrap(config: Any) -> Any:
    """The body of a resource, module or for-expression, past ``if (...)`` and ``for ...``."""
    while (
        isinstance(config, dict)
        and "config" in config
        and ("condition" in config or "loop_type" in config)
    ):
        config = config["config"]
    return config


def dotted(expr: Any) -> str | None:
    """``a.b.c`` for a property-accessor chain (or a bare identifier), else None."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, dict) and "function" in expr and len(expr["function"]) == 1:
        return f"{expr['function']['type']}()"
    operator = expr.get("operator") if isinstance(expr, dict) else None
    if isinstance(operator, dict) and operator.get("type") == "property_accessor":
        left = dotted(operator["operands"]["operand_1"])
        right = dotted(operator["operands"]["operand_2"])
        if left is not None and right is not None:
            return f"{left}.{right}"
    return None


def function_call(expr: Any, name: str) -> dict[str, Any] | None:
    """The parameters of ``name(...)`` if ``expr`` is that call."""
    function = expr.get("function") if isinstance(expr, dict) else None
    if isinstance(function, dict) and function.get("type") == name:
        return dict(function.get("parameters") or {})
    return None


def get(node: Any, path: str) -> Any:
    """``node['a']['b']`` for ``path='a.b'``; None when a key is missing."""
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


@dataclass(frozen=True)
class Origin:
    """Where a value comes from once parameters, module outputs and variables are followed."""

    file: str
    kind: str  # a resource type, "param" (of the root template), "literal" or "unknown"
    detail: str


class Infra:
    """The parse trees of every Bicep file under ``infra/``, keyed by path relative to it."""

    def __init__(self, trees: dict[str, Tree], root: Path) -> None:
        self.trees = trees
        self.root = root

    def copy(self) -> Infra:
        return Infra(copy.deepcopy(self.trees), self.root)

    # ---- symbols

    def section(self, file: str, name: str) -> dict[str, Any]:
        section = self.trees[file].get(name) or {}
        assert isinstance(section, dict)
        return section

    def resources(self, file: str, type_: str | None = None) -> dict[str, dict[str, Any]]:
        found = self.section(file, "resources")
        return {n: r for n, r in found.items() if type_ is None or r["type"] == type_}

    def all_resources(self, type_: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for file in self.trees:
            for name, resource in self.resources(file, type_).items():
                yield file, name, resource

    def body(self, file: str, name: str) -> dict[str, Any]:
        body = unwrap(self.section(file, "resources")[name]["config"])
        assert isinstance(body, dict)
        return body

    def only_body(self, file: str, type_: str) -> dict[str, Any]:
        names = [n for n, r in self.resources(file, type_).items() if not r["existing"]]
        assert len(names) == 1, f"{file}: expected one {type_}, found {names}"
        return self.body(file, names[0])

    def module_file(self, file: str, module: str) -> str:
        path = self.section(file, "modules")[module]["detail"]["path"]
        return (Path(file).parent / path).as_posix()

    def module_params(self, file: str, module: str) -> dict[str, Any]:
        params = unwrap(self.section(file, "modules")[module]["config"]).get("params") or {}
        assert isinstance(params, dict)
        return params

    def callers(self, target: str) -> Iterator[tuple[str, str]]:
        """(file, module symbol) for every module declaration that deploys ``target``."""
        for file in self.trees:
            for module in self.section(file, "modules"):
                if self.module_file(file, module) == target:
                    yield file, module

    def param_default(self, file: str, name: str) -> Any:
        return self.section(file, "parameters")[name].get("default")

    def param_allowed(self, file: str, name: str) -> list[Any] | None:
        for decorator in self.section(file, "parameters")[name]["decorators"]:
            if decorator["type"] == "allowed":
                return list(decorator["argument"])
        return None

    # ---- value tracing

    def trace(self, file: str, expr: Any, depth: int = 0) -> set[Origin]:
        """Follow ``expr`` (in ``file``) through variables, parameters (to every caller) and
        module outputs, to the resource property, root parameter or literal it comes from."""
        if depth > 20:
            return {Origin(file, "unknown", "too deep")}
        path = dotted(expr)
        if path is None:
            return {Origin(file, "literal", json.dumps(expr, sort_keys=True, default=str))}
        head, _, rest = path.partition(".")
        variables = self.section(file, "variables")
        parameters = self.section(file, "parameters")
        modules = self.section(file, "modules")
        resources = self.section(file, "resources")
        if head in variables and not rest:
            return self.trace(file, variables[head]["value"], depth + 1)
        if head in parameters and not rest:
            callers = list(self.callers(file))
            if not callers:
                return {Origin(file, "param", head)}
            origins: set[Origin] = set()
            for caller, module in callers:
                params = self.module_params(caller, module)
                if head in params:
                    origins |= self.trace(caller, params[head], depth + 1)
                else:
                    origins |= self.trace(file, self.param_default(file, head), depth + 1)
            return origins
        if head in modules and rest.startswith("outputs."):
            target = self.module_file(file, head)
            output = self.section(target, "outputs")[rest.removeprefix("outputs.")]
            return self.trace(target, output["value"], depth + 1)
        if head in resources:
            return {Origin(file, resources[head]["type"], rest)}
        return {Origin(file, "literal", path)}

    # ---- role assignments

    def role_definition_guid(self, file: str, expr: Any) -> str | None:
        """The built-in role GUID, or ``custom:<symbol>`` for a role defined in ``file``."""
        call = function_call(expr, "subscription_resource_id")
        if call is None:
            return None
        name = call.get("resource_name_1")
        path = dotted(name)
        if path and path.endswith(".name"):
            symbol = path.removesuffix(".name")
            if self.resources(file).get(symbol, {}).get("type") == ROLE_DEFINITIONS:
                return f"custom:{symbol}"
        resolved = self.section(file, "variables").get(str(path), {}).get("value", name)
        return resolved if isinstance(resolved, str) else None

    def vault_role_assignments(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Role assignments whose scope is a Key Vault."""
        for file, name, _ in self.all_resources(ROLE_ASSIGNMENTS):
            body = self.body(file, name)
            scope = self.resources(file).get(str(dotted(body.get("scope"))))
            if scope is not None and scope["type"] == VAULTS:
                yield file, name, body


def parse_all(root: Path) -> Infra:
    from pycep import BicepParser

    parser = BicepParser()
    trees = {
        path.relative_to(root).as_posix(): parser.parse(text=path.read_text(encoding="utf-8"))
        for path in sorted(root.rglob("*.bicep"))
    }
    return Infra(trees, root)
