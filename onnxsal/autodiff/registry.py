"""Backward rules by ONNX op type, grouped in rule sets.

A rule is `rule(ctx) -> sequence of gradient tensor names aligned with node.input` (None where an
input gets no gradient). `gradient` holds plain calculus for every supported op; another rule set
overrides some ops and falls back to `gradient` for the rest.

A rule set is a `RuleSet` record: name, description, citation, its per-op rules, an optional node
selector (composites such as LRP's pick a rule by the node's position: first linear layer, every Conv,
a name pattern), the canonicalisers it needs, an optional change of the seed (LRP starts from the
relevance seed * score rather than from the seed) and a check that names what the graph lacks
(LRP needs BatchNormalization folded). `rule(..., ruleset=...)` registers per-op rules into a record
made on first use; parametrised rule sets (`lrp:epsilon_plus_flat;epsilon=1e-6`) are made by a factory
registered under their prefix and are built once per distinct name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

RULES: dict[str, dict[str, Callable]] = {"gradient": {}}

RULESET_DOCS = {
    "gradient": "plain calculus: the exact vector-Jacobian product of every op",
    "guided_backprop": "Springenberg et al. 2015: ReLU-like ops pass only positive gradient through positive inputs",
    "deconvnet": "Zeiler & Fergus 2014: ReLU-like ops pass only positive gradient, ignoring the forward sign",
}


@dataclass(frozen=True)
class NodePosition:
    """Where a node sits among the rule set's layers on the differentiated path (input side first)."""

    index: int  # 0 = the first layer after the input (among the rule set's layer ops on the path)
    count: int  # how many such layers the path has
    reads_input: bool  # one of the node's inputs is a tensor the gradient is taken with respect to

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


@dataclass
class RuleSet:
    """A named set of backward rules (see the module docstring).

    rules:     op type -> rule; ops without one fall back to `gradient`'s rule.
    select:    optional (node, NodePosition | None) -> rule | None; when it returns a rule, that rule wins
               over `rules` (composites). NodePosition is given to nodes whose op is in `layer_ops`.
    start:     optional (emitter, seed, output) -> tensor: what flows back from the output instead of the seed.
    check:     optional (model, path nodes) -> list of one-line warnings (e.g. an unfolded BatchNormalization).
    canonicalisers: names of the graph passes the rule set relies on (graph/canonicalize.py), for listings.
    """

    name: str
    description: str = ""
    citation: str = ""
    rules: dict[str, Callable] = field(default_factory=dict)
    select: Callable | None = None
    layer_ops: frozenset = frozenset()
    start: Callable | None = None
    check: Callable | None = None
    canonicalisers: tuple[str, ...] = ()

    def rule_for(self, node, position: NodePosition | None = None) -> Callable | None:
        """The backward rule of `node` under this rule set (None: no rule)."""
        if self.select is not None:
            chosen = self.select(node, position)
            if chosen is not None:
                return chosen
        own = self.rules.get(node.op_type)
        if own is not None:
            return own
        return RULES["gradient"].get(node.op_type)

    def supported_ops(self) -> list[str]:
        return sorted(set(RULES["gradient"]) | set(self.rules))


# parametrised families: prefix -> (factory(name) -> RuleSet, description, citation, names to list)
FAMILIES: dict[str, tuple[Callable[[str], RuleSet], str, str, tuple[str, ...]]] = {}
_BUILT: dict[str, RuleSet] = {}
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


def family(prefix: str, description: str, citation: str = "", listed: tuple[str, ...] = ()):
    """Register a factory of parametrised rule sets named `prefix` or `prefix:...`."""

    def register(factory: Callable[[str], RuleSet]) -> Callable[[str], RuleSet]:
        FAMILIES[prefix] = (factory, description, citation, tuple(listed))
        return factory

    return register


def get(name: str) -> RuleSet:
    """The RuleSet record called `name`; raises UnsupportedOpError (one line) when there is none."""
    _load()
    if name in RULES:
        # a plain table (registered with @rule): a fresh record each time, so a table edited later is seen
        return RuleSet(name, RULESET_DOCS.get(name, ""), rules=RULES[name])
    if name in _BUILT:
        return _BUILT[name]
    prefix = name.split(":", 1)[0]
    if prefix in FAMILIES:
        built = FAMILIES[prefix][0](name)
        _BUILT[name] = built
        return built
    from ..errors import UnsupportedOpError

    raise UnsupportedOpError(f"unknown rule set {name!r}; choose one of {', '.join(rulesets())}")


def lookup(ruleset: str, op_type: str) -> Callable | None:
    """The per-op rule of `ruleset` (no node selection), falling back to `gradient`."""
    _load()
    own = RULES.get(ruleset, {})
    return own.get(op_type) or RULES["gradient"].get(op_type)


def rulesets() -> dict[str, str]:
    """Rule set names and one-line descriptions: plain tables, then each family's listed names."""
    _load()
    out = {name: RULESET_DOCS.get(name, "") for name in RULES}
    for prefix, (_factory, description, _citation, listed) in FAMILIES.items():
        out[prefix] = description
        for name in listed:
            out[name] = get(name).description
    return out


def citations() -> dict[str, str]:
    _load()
    return {prefix: citation for prefix, (_f, _d, citation, _l) in FAMILIES.items() if citation}


def supported_ops(ruleset: str = "gradient") -> list[str]:
    _load()
    return get(ruleset).supported_ops()


_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from .rules import activation, deeplift, elementwise, lrp, modified_relu, nn, reduce, shape  # noqa: F401  (registers rules)
