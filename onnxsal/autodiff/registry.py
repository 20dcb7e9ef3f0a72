"""Backward rules by ONNX op type, grouped in rule sets.

A rule is `rule(ctx) -> sequence of gradient tensor names aligned with node.input` (None where an
input gets no gradient). `gradient` holds plain calculus for every supported op; another rule set
overrides some ops and falls back to `gradient` for the rest.
"""

from __future__ import annotations

from typing import Callable

RULES: dict[str, dict[str, Callable]] = {"gradient": {}}

RULESET_DOCS = {
    "gradient": "plain calculus: the exact vector-Jacobian product of every op",
    "guided_backprop": "Springenberg et al. 2015: ReLU-like ops pass only positive gradient through positive inputs",
    "deconvnet": "Zeiler & Fergus 2014: ReLU-like ops pass only positive gradient, ignoring the forward sign",
}


# rule sets whose rules read a reference forward pass (RuleContext.ref): the augmented graph gets a reference input
REFERENCE_RULESETS: set[str] = set()


def needs_reference(ruleset: str) -> bool:
    _load()
    return ruleset in REFERENCE_RULESETS


def rule(*op_types: str, ruleset: str = "gradient"):
    """Register the decorated function as the backward rule of `op_types` in `ruleset`."""

    def register(fn: Callable) -> Callable:
        table = RULES.setdefault(ruleset, {})
        for op in op_types:
            if op in table:
                raise ValueError(f"rule for {op} registered twice in {ruleset}")
            table[op] = fn
        return fn

    return register


def lookup(ruleset: str, op_type: str) -> Callable | None:
    _load()
    own = RULES.get(ruleset, {})
    return own.get(op_type) or RULES["gradient"].get(op_type)


def rulesets() -> dict[str, str]:
    _load()
    return {name: RULESET_DOCS.get(name, "") for name in RULES}


def supported_ops(ruleset: str = "gradient") -> list[str]:
    _load()
    return sorted(set(RULES["gradient"]) | set(RULES.get(ruleset, {})))


_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from .rules import activation, deeplift, elementwise, modified_relu, nn, reduce, shape  # noqa: F401  (registers rules)
