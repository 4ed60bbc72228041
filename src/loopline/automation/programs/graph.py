"""Step-graph rules, as pure functions over plain step descriptions (no database): the graph of a program must be
reachable from its start, acyclic, and each step's configuration complete ([M20]; issue #8 "bad input")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_RULE_CONDITIONS = 5  # [M20]: a rule step has up to 5 conditions
MAX_STEPS = 200


@dataclass(frozen=True)
class Node:
    id: int
    kind: str  # action | trigger | rule | end
    next_id: int | None = None
    yes_id: int | None = None
    no_id: int | None = None
    label: str = ""

    def successors(self) -> list[int]:
        if self.kind == "end":
            return []
        if self.kind in ("trigger", "rule"):
            return [s for s in (self.yes_id, self.no_id) if s is not None]
        return [self.next_id] if self.next_id is not None else []


def problems(nodes: Iterable[Node], start_id: int | None) -> list[str]:
    """Everything that stops a program from starting; an empty list means the graph is sound."""
    by_id: Mapping[int, Node] = {n.id: n for n in nodes}
    out: list[str] = []
    if not by_id:
        return ["Add at least one step"]
    if len(by_id) > MAX_STEPS:
        out.append(f"A program has at most {MAX_STEPS} steps")
    if start_id is None or start_id not in by_id:
        return [*out, "Choose the first step"]
    for node in by_id.values():
        for target in (node.next_id, node.yes_id, node.no_id):
            if target is not None and target not in by_id:
                out.append(f"{node.label or node.id}: goes to a step that no longer exists")
    # Depth-first search with colours finds cycles and reachability in one pass.
    colour: dict[int, int] = {}
    cycle_at: list[int] = []

    def visit(start: int) -> None:
        stack: list[tuple[int, int]] = [(start, 0)]
        colour[start] = 1
        while stack:
            current, i = stack.pop()
            succ = [s for s in by_id[current].successors() if s in by_id]
            if i < len(succ):
                stack.append((current, i + 1))
                nxt = succ[i]
                if colour.get(nxt) == 1:
                    cycle_at.append(nxt)
                elif nxt not in colour:
                    colour[nxt] = 1
                    stack.append((nxt, 0))
            else:
                colour[current] = 2

    visit(start_id)
    if cycle_at:
        node = by_id[cycle_at[0]]
        out.append(f"The flow loops back to {node.label or node.id}: a program must always move forward")
    unreachable = [n for n in by_id.values() if n.id not in colour]
    for node in unreachable:
        out.append(f"{node.label or node.id} cannot be reached from the first step")
    return out


def ordered(nodes: Iterable[Node], start_id: int | None) -> list[int]:
    """Step ids in flow order (breadth first from the start), then any unreachable ones."""
    by_id = {n.id: n for n in nodes}
    seen: list[int] = []
    queue = [start_id] if start_id in by_id else []
    while queue:
        current = queue.pop(0)
        if current in seen or current not in by_id:
            continue
        seen.append(current)
        queue.extend(by_id[current].successors())
    return seen + [i for i in by_id if i not in seen]


def count_conditions(tree) -> int:
    """Leaf conditions in a criteria tree (nested groups counted through)."""
    if not isinstance(tree, Mapping):
        return 0
    total = 0
    for rule in tree.get("rules") or []:
        if isinstance(rule, Mapping) and "rules" in rule:
            total += count_conditions(rule)
        else:
            total += 1
    return total
