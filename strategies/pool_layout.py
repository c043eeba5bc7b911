"""How a rank's K and V pool layers are carved out of memory, as real engines carve them.

Whatever the layout, an implementation is handed each layer as a ``[pool_tokens, heads, head_dim]``
tensor; the layout decides where its elements physically sit.  A :class:`PoolLayout` lists the
physical axes outermost first -- ``token``, ``head`` and ``dim`` always, plus ``kv`` (K and V as two
views of one tensor) and ``layer`` (every layer a slice of one allocation) when they share an
allocation -- with canary padding after each unit of each axis and before the first element.  So:

* today's layout (each K and V layer its own contiguous tensor) is ``("token", "head", "dim")``;
* one big allocation sliced per layer: ``"layer"`` outermost, padding after each layer;
* one ``[2, blocks, block, heads, dim]`` buffer per layer: ``("kv", "token", "head", "dim")``;
  K and V interleaved in the last dimension: ``("token", "head", "kv", "dim")``;
  element-wise interleaved (K and V alternate): ``"kv"`` innermost, so ``dim`` has stride 2;
* page-major (``token`` before ``head``) or head-major (``head`` before ``token``) order;
* padding after a token row, a head or an element: non-contiguous strides with gaps in between.

A ``[blocks, 2, block, ...]`` buffer (K and V alternating per page) has no ``[pool_tokens, ...]``
strided view unless pages hold one token, so it appears as ``("token", "kv", ...)`` (alternating per
token); padding between pages of several tokens likewise only as padding after each token row.

The harness builds pools from a layout with canaries in every gap, so a write through the wrong
stride or past a view lands in a canary.  ``kind`` names the layout's class for case labels.
Nothing here imports the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

#: Axes of a pool in memory; ``token``, ``head`` and ``dim`` are the logical axes of every layer.
AXES = ("layer", "kv", "token", "head", "dim")
#: Layout classes, most specific first: ``kind`` is the first that applies.
LAYOUT_KINDS = ("strided_dim", "kv_interleaved", "head_major", "kv_fused", "layer_slices", "padded", "contiguous")


@dataclass(frozen=True)
class ViewPlacement:
    """Where one K or V layer sits: allocation index, element offset in it, and element strides of
    ``[pool_tokens, heads, head_dim]``."""

    allocation: int
    offset: int
    strides: tuple[int, int, int]


@dataclass(frozen=True)
class PoolGeometry:
    """A layout applied to sizes: element count of each allocation and the placement of every layer
    (``views[kv][layer]``, kv 0 = K)."""

    allocation_elements: tuple[int, ...]
    views: tuple[tuple[ViewPlacement, ...], tuple[ViewPlacement, ...]]


@dataclass(frozen=True)
class PoolLayout:
    """Physical axis order (outermost first), padding elements after each unit of each axis, and
    ``lead`` padding elements before the first one (an address off the allocation's alignment)."""

    order: tuple[str, ...] = ("token", "head", "dim")
    pads: tuple[int, ...] = (0, 0, 0)
    lead: int = 0

    def __post_init__(self) -> None:
        if len(set(self.order)) != len(self.order) or not {"token", "head", "dim"} <= set(self.order) <= set(AXES):
            raise ValueError(f"order must hold token, head, dim and optionally kv, layer, once each; got {self.order}")
        if len(self.pads) != len(self.order) or min(self.pads) < 0 or self.lead < 0:
            raise ValueError(f"pads need one non-negative count per axis of {self.order}, got {self.pads}, lead {self.lead}")

    def geometry(self, num_layers: int, pool_tokens: int, heads: int, head_dim: int) -> PoolGeometry:
        """Allocation sizes and layer placements for a pool of these sizes.

        The stride of an axis spans one unit of the next inner axis times its size, plus the axis's
        padding; axes outside ``order`` (``layer``, ``kv``) get an allocation per index instead."""
        sizes = {"layer": num_layers, "kv": 2, "token": pool_tokens, "head": heads, "dim": head_dim}
        stride: dict[str, int] = {}
        unit = 1
        for axis, pad in zip(reversed(self.order), reversed(self.pads)):
            stride[axis] = unit + pad
            unit = sizes[axis] * stride[axis]
        own_layers = "layer" not in self.order
        own_kv = "kv" not in self.order
        allocations = (num_layers if own_layers else 1) * (2 if own_kv else 1)
        views: list[list[ViewPlacement]] = [[], []]
        for kv in range(2):
            for layer in range(num_layers):
                index = (layer if own_layers else 0) * (2 if own_kv else 1) + (kv if own_kv else 0)
                offset = self.lead + (0 if own_kv else kv * stride["kv"]) + (0 if own_layers else layer * stride["layer"])
                views[kv].append(ViewPlacement(index, offset, (stride["token"], stride["head"], stride["dim"])))
        return PoolGeometry((self.lead + unit,) * allocations, (tuple(views[0]), tuple(views[1])))

    @property
    def features(self) -> tuple[str, ...]:
        """Every class in :data:`LAYOUT_KINDS` (bar ``contiguous``) this layout belongs to."""
        position = {axis: i for i, axis in enumerate(self.order)}
        kv = position.get("kv")
        found = {
            "strided_dim": self.pads[position["dim"]] > 0 or position["dim"] != len(self.order) - 1,
            "kv_interleaved": kv is not None and kv > min(position["token"], position["head"]),
            "head_major": position["head"] < position["token"],
            "kv_fused": kv is not None,
            "layer_slices": "layer" in position,
            "padded": self.lead > 0 or any(self.pads),
        }
        return tuple(kind for kind in LAYOUT_KINDS if found.get(kind))

    @property
    def kind(self) -> str:
        """The layout's class, one of :data:`LAYOUT_KINDS` (for case labels)."""
        features = self.features
        return features[0] if features else "contiguous"

    @property
    def name(self) -> str:
        """Every feature joined (``contiguous`` when none): a readable label."""
        return "+".join(self.features) or "contiguous"


#: Each K and V layer its own contiguous tensor (what every pool was before layouts were drawn).
CONTIGUOUS = PoolLayout()


@st.composite
def _pool_layouts(draw, max_pad: int) -> PoolLayout:
    order = ["head", "token", "dim"] if draw(st.booleans()) else ["token", "head", "dim"]
    kv_at = draw(st.none() | st.integers(0, len(order)))
    if kv_at is not None:
        order.insert(kv_at, "kv")
    layer_at = draw(st.none() | st.integers(0, len(order)))
    if layer_at is not None:
        order.insert(layer_at, "layer")
    if not draw(st.booleans()):
        return PoolLayout(tuple(order), (0,) * len(order))
    # Padding between elements (a strided last dim) is rare in engines: drawn apart, less often.
    pads = tuple(draw(st.sampled_from((0, 0, 1) if max_pad else (0,))) if axis == "dim" else draw(st.integers(0, max_pad))
                 for axis in order)
    return PoolLayout(tuple(order), pads, draw(st.integers(0, max_pad)))


def pool_layouts(max_pad: int = 3) -> st.SearchStrategy[PoolLayout]:
    """Pool layouts: page- or head-major, K and V separate or fused (anywhere in the order, down to
    element-wise interleaving), layers separate or slices of one allocation (anywhere in the order),
    and, half the time, up to ``max_pad`` padding elements after each unit of each axis and before
    the first.  Shrinks toward :data:`CONTIGUOUS`."""
    if max_pad < 0:
        raise ValueError(f"max_pad must be >= 0, got {max_pad}")
    return _pool_layouts(max_pad)
