"""Where each bus goes on the operator's diagram: the model's coordinates, or a computed
single-line layout.

Coordinates from the model (geographic, from pandapower/simbench) are used when every bus has
them. Otherwise buses are laid out as the feeder trees they are: the source bus at the top,
each bus one row below the bus that feeds it (breadth-first through lines, transformers and
closed or open switches alike, so the picture does not jump when a switch opens), and every
subtree given as many columns as it has leaves. Positions are normalised to 0..1000.
"""

from __future__ import annotations

from collections import defaultdict, deque

from gridpilot.model.grid import GridModel

SIZE = 1000.0


def _edges(model: GridModel) -> dict[str, list[str]]:
    adj: dict[str, list[str]] = defaultdict(list)
    pairs = [(ln.from_bus, ln.to_bus) for ln in model.lines]
    pairs += [(t.hv_bus, t.lv_bus) for t in model.transformers]
    pairs += [(s.bus, s.element) for s in model.switches if s.element_kind == "bus"]
    for a, b in pairs:
        adj[a].append(b)
        adj[b].append(a)
    return adj


Points = dict[str, tuple[float, float]]


def _normalise(xy: Points, *, flip_y: bool) -> Points:
    xs = [p[0] for p in xy.values()]
    ys = [p[1] for p in xy.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    x0, y0, y1 = min(xs), min(ys), max(ys)
    out = {}
    for bus, (x, y) in xy.items():
        ny = (y1 - y) if flip_y else (y - y0)  # north up for geographic coordinates
        out[bus] = (round((x - x0) / span * SIZE, 2), round(ny / span * SIZE, 2))
    return out


def tree_layout(model: GridModel) -> dict[str, tuple[float, float]]:
    adj = _edges(model)
    roots = [s.bus for s in model.sources] or [model.buses[0].id]
    parent: dict[str, str | None] = {}
    order: list[str] = []
    depth: dict[str, int] = {}
    children: dict[str, list[str]] = defaultdict(list)
    for root in [*roots, *(b.id for b in model.buses)]:  # every island gets a root
        if root in parent:
            continue
        parent[root] = None
        depth[root] = 0
        queue = deque([root])
        while queue:
            bus = queue.popleft()
            order.append(bus)
            for nxt in adj[bus]:
                if nxt not in parent:
                    parent[nxt] = bus
                    depth[nxt] = depth[bus] + 1
                    children[bus].append(nxt)
                    queue.append(nxt)
    leaves: dict[str, int] = {}
    for bus in reversed(order):
        leaves[bus] = sum(leaves[c] for c in children[bus]) or 1
    xy: dict[str, tuple[float, float]] = {}
    next_left = 0.0
    for bus in order:
        if parent[bus] is None:  # the root of an island: its tree goes right of the last one
            _place(bus, next_left, children, leaves, depth, xy)
            next_left += leaves[bus] + 1
    return _normalise(xy, flip_y=False)


def _place(
    root: str,
    left: float,
    children: dict[str, list[str]],
    leaves: dict[str, int],
    depth: dict[str, int],
    xy: dict[str, tuple[float, float]],
) -> None:
    stack = [(root, left)]
    while stack:
        bus, x0 = stack.pop()
        xy[bus] = (x0 + leaves[bus] / 2, float(depth[bus]))
        for child in children[bus]:
            stack.append((child, x0))
            x0 += leaves[child]


def layout(model: GridModel) -> tuple[dict[str, tuple[float, float]], str]:
    """Each bus's (x, y) in 0..1000 and where they came from: "geographic" or "computed"."""
    geo = {b.id: (b.x, b.y) for b in model.buses if b.x is not None and b.y is not None}
    if model.buses and len(geo) == len(model.buses):
        points = {bus: (float(x), float(y)) for bus, (x, y) in geo.items()}
        if len(set(points.values())) > len(points) // 2:  # not all piled on a few spots
            return _normalise(points, flip_y=True), "geographic"
    return tree_layout(model), "computed"
