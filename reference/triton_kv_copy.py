"""Triton gather / scatter between paged KV pools and staging, one launch each.

Same contract as :mod:`reference.kv_copy` (and the ``kv_copy`` capability of
``harness/interface.py``): bytes move through the signed integer type of the
element size, so fp8 values and NaN payloads survive bit-exactly.

One launch for every layer.  The pool is a *list* of per-layer tensors, so a
single kernel needs to reach all of them.  A table of raw addresses cast to
pointers in the kernel works (also under the interpreter), but the compiler
then knows nothing about their alignment and emits 2-byte loads for bf16
(checked in the PTX; ``tl.multiple_of`` could assert it, unchecked).  Instead
the kernel receives one real pointer, the first K layer, plus a table of each
layer's distance from it counted in units of ``DELTA_UNIT`` elements.
``DELTA_UNIT`` is the largest power of two <= 16 bytes that divides every
distance, measured on the host and passed as a compile-time constant, so the
compiler proves the alignment itself and emits 16-byte accesses.  All layers
share one dtype, so distances are whole elements.  The same formulation runs
unchanged under the Triton CPU interpreter, which uses CPU tensors in place
(raw addresses are plain host memory).

Work split: one program copies a tile of ``BLOCK_T`` tokens x one token's
head slice (``heads * head_dim`` elements) of one (K/V, layer) [, writer].
Per-token page lookups use 32-bit arithmetic; the per-element work is one add.
Grid axis 0 runs over token blocks so neighbouring programs stream through
neighbouring staging bytes.

Strided layers (views of a larger allocation, as engines carve pools: layer
slices, K and V interleaved, head-major order, padded rows) are taken as they
are: the kernels read the token and head strides of the layers, which must be
the same for every layer (the layer distance table covers where each layer
starts).  Heads packed back to back in a token (head stride ``head_dim``, the
contiguous case) compile to the original one-add-per-element code
(``HEADS_PACKED``); otherwise each element adds its head's stride.  Layers the
kernels cannot address -- a head's elements not adjacent (``head_dim`` stride
other than 1), or layers with different strides -- go to the torch path
(:mod:`reference.kv_copy`), which indexes any strides: the kernels copy each
head's elements as one run from one base pointer and one stride pair.

CPU tensors always run through the interpreter (slow, for tests); CUDA tensors
through the compiled kernels.  :func:`is_available` says whether the fast path
exists for a device, so callers can fall back to the torch path.
"""

from __future__ import annotations

import operator
import os
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from reference import kv_copy

try:  # Triton is optional: the reference falls back to torch without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = None
    tl = None

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_VECTOR_BYTES = 16


@dataclass(frozen=True)
class TileConfig:
    """Launch shape: bytes one program copies and warps per program."""

    tile_bytes: int = 16384
    num_warps: int = 4

    def __post_init__(self) -> None:
        if self.tile_bytes < 1 or self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
            raise ValueError(f"tile_bytes must be >= 1 and num_warps a power of two, got {self}")


DEFAULT_TILE = TileConfig()


def is_available(device: torch.device | str) -> bool:
    """Whether the Triton path is a sensible choice on ``device``.

    True for CUDA devices when Triton is installed, and for the CPU only when
    ``TRITON_INTERPRET=1`` asks for the (slow) interpreter explicitly.
    """
    if triton is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --------------------------------------------------------------------------- kernels


def _gather_kernel_src(
    pool_base,  # first K layer, integer view
    layer_delta,  # [2L] int64: layer start - pool_base, in DELTA_UNIT elements (K layers, then V)
    page_table,  # [pages] int64
    out,  # integer view of the writer's staging part
    num_tokens,
    page_size,
    pool_token_stride,  # elements between pool tokens (heads_on_rank * head_dim when contiguous)
    pool_head_stride,  # elements between heads (HEAD_DIM when HEADS_PACKED)
    head_start,
    head_offset,  # head_start * pool_head_stride, computed on the host (64-bit when large)
    HEAD_DIM: tl.constexpr,
    ROW: tl.constexpr,  # head_count * HEAD_DIM, contiguous in staging (and in the pool when HEADS_PACKED)
    ROW_BLOCK: tl.constexpr,  # ROW rounded up to a power of two
    BLOCK_T: tl.constexpr,
    DELTA_UNIT: tl.constexpr,
    HEADS_PACKED: tl.constexpr,
):
    token_block = tl.program_id(0)
    layer_kv = tl.program_id(1)  # kv * L + layer, which is also the staging block index
    delta = tl.load(layer_delta + layer_kv) * DELTA_UNIT

    token = token_block * BLOCK_T + tl.arange(0, BLOCK_T)
    token_ok = token < num_tokens
    page = tl.load(page_table + token // page_size, mask=token_ok, other=0)
    slot = page * page_size + (token % page_size)
    dst_row = (layer_kv.to(tl.int64) * num_tokens + token) * ROW

    col = tl.arange(0, ROW_BLOCK)
    if ROW == ROW_BLOCK:
        mask = token_ok[:, None]
    else:
        mask = token_ok[:, None] & (col < ROW)[None, :]
    if HEADS_PACKED:
        src_row = delta + slot * pool_token_stride + head_start * HEAD_DIM
        values = tl.load(pool_base + src_row[:, None] + col[None, :], mask=mask)
    else:
        src_row = delta + slot * pool_token_stride + head_offset
        src_col = (col // HEAD_DIM).to(tl.int64) * pool_head_stride + col % HEAD_DIM
        values = tl.load(pool_base + src_row[:, None] + src_col[None, :], mask=mask)
    tl.store(out + dst_row[:, None] + col[None, :], values, mask=mask)


def _scatter_kernel_src(
    staging,  # integer view of the chunk's staging region (all writers)
    pool_base,  # first K layer, integer view
    layer_delta,  # [2L] int64: layer start - pool_base, in DELTA_UNIT elements (K layers, then V)
    writer_heads,  # [W] int32 destination head start per writer
    writer_layers,  # [W] int32 destination layer start per writer
    page_table,  # [pages] int64
    num_tokens,
    page_size,
    pool_token_stride,  # elements between pool tokens (heads_on_rank * head_dim when contiguous)
    pool_head_stride,  # elements between heads (HEAD_DIM when HEADS_PACKED)
    pool_layers,
    layers_per_writer,
    HEAD_DIM: tl.constexpr,
    ROW: tl.constexpr,  # heads_per_writer * HEAD_DIM
    ROW_BLOCK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DELTA_UNIT: tl.constexpr,
    HEADS_PACKED: tl.constexpr,
):
    token_block = tl.program_id(0)
    layer_kv = tl.program_id(1)  # kv * layers_per_writer + layer, inside the writer's part
    writer = tl.program_id(2)
    kv = layer_kv // layers_per_writer
    layer = layer_kv - kv * layers_per_writer
    pool_layer = tl.load(writer_layers + writer) + layer
    delta = tl.load(layer_delta + kv * pool_layers + pool_layer) * DELTA_UNIT
    head = tl.load(writer_heads + writer)

    token = token_block * BLOCK_T + tl.arange(0, BLOCK_T)
    token_ok = token < num_tokens
    page = tl.load(page_table + token // page_size, mask=token_ok, other=0)
    slot = page * page_size + (token % page_size)
    block = writer.to(tl.int64) * 2 * layers_per_writer + layer_kv
    src_row = (block * num_tokens + token) * ROW

    col = tl.arange(0, ROW_BLOCK)
    if ROW == ROW_BLOCK:
        mask = token_ok[:, None]
    else:
        mask = token_ok[:, None] & (col < ROW)[None, :]
    values = tl.load(staging + src_row[:, None] + col[None, :], mask=mask)
    if HEADS_PACKED:
        dst_row = delta + slot * pool_token_stride + head.to(tl.int64) * HEAD_DIM
        tl.store(pool_base + dst_row[:, None] + col[None, :], values, mask=mask)
    else:
        dst_row = delta + slot * pool_token_stride + head.to(tl.int64) * pool_head_stride
        dst_col = (col // HEAD_DIM).to(tl.int64) * pool_head_stride + col % HEAD_DIM
        tl.store(pool_base + dst_row[:, None] + dst_col[None, :], values, mask=mask)


@lru_cache(maxsize=None)
def _kernel(name: str, interpreted: bool):
    """The compiled (CUDA) or interpreted (CPU) kernel, regardless of
    ``TRITON_INTERPRET``: CPU tensors must never reach a compiled kernel and
    the cross-tensor offsets must never reach the interpreter's per-argument
    device-to-host copies."""
    fn = {"gather": _gather_kernel_src, "scatter": _scatter_kernel_src}[name]
    if interpreted:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    from triton.runtime.jit import JITFunction

    return JITFunction(fn)


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Pool:
    """A validated pool: shape facts plus the layer-distance table.  Holds no
    layer tensor, so caching it never keeps a pool alive."""

    device: torch.device
    layer_delta: torch.Tensor  # [2L] int64 on the pool's device
    delta_unit: int
    layers: int
    heads: int
    head_dim: int
    element_size: int
    int_dtype: torch.dtype
    token_stride: int  # elements, shared by every layer
    head_stride: int
    heads_packed: bool  # head stride == head_dim: a token's heads are one run
    torch_path_because: str | None = None  # why the kernels cannot take these layers (then kv_copy does)


def _check_pool(k_layers: Sequence[torch.Tensor], v_layers: Sequence[torch.Tensor], what: str) -> _Pool:
    """The validated pool for these layer tensors, from the cache when the very
    same tensor objects were validated before and still sit at the same
    addresses (full validation of 160 layers costs ~0.2 ms of host time, more
    than a chunk's copy on the GPU)."""
    if triton is None:
        raise RuntimeError("triton is not installed; use reference.kv_copy (the torch path) instead")
    if not k_layers or len(k_layers) != len(v_layers):
        raise ValueError(f"{what}: need the same non-zero number of K and V layers, got {len(k_layers)} and {len(v_layers)}")
    layers = (*k_layers, *v_layers)
    key = tuple(map(id, layers))
    hit = _POOL_CACHE.get(key)
    if hit is not None:
        refs, ptrs, pool = hit
        if all(map(operator.is_, map(_deref, refs), layers)) and ptrs == tuple(map(_data_ptr, layers)):
            return pool
    pool = _validate_pool(layers, len(k_layers), what)
    if len(_POOL_CACHE) >= _POOL_CACHE_SIZE:
        _POOL_CACHE.pop(next(iter(_POOL_CACHE)))
    _POOL_CACHE[key] = (tuple(map(weakref.ref, layers)), tuple(map(_data_ptr, layers)), pool)
    return pool


#: ids of a pool's layer tensors -> (weak references, addresses, validated pool).
#: The weak references make a hit require the very same live tensor objects.
_POOL_CACHE: dict[tuple[int, ...], tuple[tuple[weakref.ref, ...], tuple[int, ...], _Pool]] = {}
_POOL_CACHE_SIZE = 16
_deref = weakref.ref.__call__
_data_ptr = torch.Tensor.data_ptr


def _validate_pool(layers: tuple[torch.Tensor, ...], num_k: int, what: str) -> _Pool:
    """Every layer is a [pool_tokens, heads, head_dim] tensor of one shape,
    dtype and device, with an element size we can copy as an integer.  Layers
    the kernels cannot address (see the module docstring) are valid but marked
    for the torch path."""
    first = layers[0]
    for index, layer in enumerate(layers):
        name = f"{'KV'[index >= num_k]} layer {index % num_k}"
        if not isinstance(layer, torch.Tensor) or layer.dim() != 3:
            raise ValueError(f"{what}: {name} must be a [pool_tokens, heads, head_dim] tensor")
        if layer.dtype != first.dtype:
            raise ValueError(f"{what}: {name} is {layer.dtype} but K layer 0 is {first.dtype}; all layers must share one dtype")
        if layer.shape != first.shape:
            raise ValueError(f"{what}: {name} has shape {tuple(layer.shape)}, K layer 0 {tuple(first.shape)}; all layers must match")
        if layer.device != first.device:
            raise ValueError(f"{what}: {name} is on {layer.device}, K layer 0 on {first.device}; move the pool to one device")
    if first.device.type not in ("cuda", "cpu"):
        raise ValueError(f"{what}: the Triton path runs on CUDA (or CPU through the interpreter), not {first.device}")
    esize = first.element_size()
    if esize not in _INT_OF_SIZE:
        raise ValueError(f"{what}: element size {esize} bytes ({first.dtype}) is not 1, 2, 4 or 8")
    ptrs = [t.data_ptr() for t in layers]
    if any(p % esize for p in ptrs):
        raise ValueError(f"{what}: a layer's address is not a multiple of its element size {esize}")
    # Largest power-of-two unit (<= 16 bytes) dividing every layer distance.
    unit = _VECTOR_BYTES // esize
    while unit > 1 and any((p - ptrs[0]) % (unit * esize) for p in ptrs):
        unit //= 2
    strides = tuple(first.stride())
    torch_path_because = None
    if any(tuple(layer.stride()) != strides for layer in layers):
        torch_path_because = "layers have different strides (the kernels take one token and head stride per launch)"
    elif strides[2] != 1 and first.shape[2] > 1:
        torch_path_because = f"a head's elements are {strides[2]} apart (the kernels copy each head as one run)"
    return _Pool(
        device=first.device,
        layer_delta=_device_table([(p - ptrs[0]) // (unit * esize) for p in ptrs], torch.int64, first.device),
        delta_unit=unit,
        layers=num_k,
        heads=first.shape[1],
        head_dim=first.shape[2],
        element_size=esize,
        int_dtype=_INT_OF_SIZE[esize],
        token_stride=strides[0],
        head_stride=strides[1],
        heads_packed=strides[1] == first.shape[2] or first.shape[1] == 1,
        torch_path_because=torch_path_because,
    )


def _device_table(values: list[int] | tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small table on ``device`` without stalling the host: on CUDA the copy leaves pinned
    memory asynchronously (a pageable host-to-device copy would synchronise)."""
    table = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


@lru_cache(maxsize=64)
def _writer_table(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A small int32 table on ``device``, cached by value (pools are long-lived)."""
    return _device_table(values, torch.int32, device)


def _check_page_table(page_table: torch.Tensor, page_size: int, num_tokens: int, device: torch.device, what: str) -> None:
    """A 1-D int64 table on the pool's device, long enough for ``num_tokens``.
    Page indices themselves are not range-checked (that would synchronise the
    device); they must address pages inside the pool."""
    if page_size < 1:
        raise ValueError(f"{what}: page_size must be >= 1, got {page_size}")
    if num_tokens < 0:
        raise ValueError(f"{what}: num_tokens must be >= 0, got {num_tokens}")
    if not isinstance(page_table, torch.Tensor) or page_table.dim() != 1 or page_table.dtype != torch.int64:
        raise ValueError(f"{what}: page table must be a 1-D int64 tensor, got {getattr(page_table, 'dtype', type(page_table))}")
    if page_table.device != device:
        raise ValueError(f"{what}: page table is on device {page_table.device} but the pool is on {device}; move it with .to()")
    pages_needed = -(-num_tokens // page_size)
    if page_table.numel() < pages_needed:
        raise ValueError(f"{what}: {num_tokens} tokens of page size {page_size} need {pages_needed} pages, the table has {page_table.numel()}")
    if num_tokens and not page_table.is_contiguous():
        raise ValueError(f"{what}: page table must be contiguous")


def _int_bytes(buf: torch.Tensor, nbytes: int, pool: _Pool, what: str, name: str) -> torch.Tensor:
    """The first ``nbytes`` of a 1-D contiguous uint8 buffer on the pool's
    device, viewed as the pool's integer type."""
    if not isinstance(buf, torch.Tensor) or buf.dtype != torch.uint8 or buf.dim() != 1:
        raise ValueError(f"{what}: {name} must be a 1-D torch.uint8 tensor, got {getattr(buf, 'dtype', type(buf))} {tuple(getattr(buf, 'shape', ()))}")
    if buf.device != pool.device:
        raise ValueError(f"{what}: {name} is on device {buf.device} but the pool is on {pool.device}; both must be on one device")
    if not buf.is_contiguous():
        raise ValueError(f"{what}: {name} must be contiguous")
    if buf.numel() < nbytes:
        raise ValueError(f"{what}: {name} holds {buf.numel()} bytes but {nbytes} are needed")
    if buf.data_ptr() % pool.element_size:
        raise ValueError(f"{what}: {name} starts at an address not aligned to the element size {pool.element_size}; place it at a multiple of {pool.element_size} bytes")
    return buf[:nbytes].view(pool.int_dtype)


def _block_tokens(row_block: int, element_size: int, num_tokens: int, tile: TileConfig) -> int:
    """Tokens per program: about ``tile.tile_bytes`` of payload, a power of two,
    no more than the chunk needs."""
    rows = max(1, tile.tile_bytes // (row_block * element_size))
    block = 1 << (rows.bit_length() - 1)
    return max(1, min(block, triton.next_power_of_2(max(1, num_tokens))))


def _launch(kernel_name: str, device: torch.device, grid: tuple[int, ...], args: tuple, constants: dict, tile: TileConfig) -> None:
    kernel = _kernel(kernel_name, device.type == "cpu")
    if device.type == "cpu":
        kernel[grid](*args, **constants)
        return
    if device.index is None or device.index == torch.cuda.current_device():
        kernel[grid](*args, **constants, num_warps=tile.num_warps)
        return
    with torch.cuda.device(device):  # launch on the pool's GPU, not the current one
        kernel[grid](*args, **constants, num_warps=tile.num_warps)


# --------------------------------------------------------------------------- public API


def gather_tiled(
    tile: TileConfig,
    k_layers: Sequence[torch.Tensor],
    v_layers: Sequence[torch.Tensor],
    page_table: torch.Tensor,
    page_size: int,
    num_tokens: int,
    head_start: int,
    head_count: int,
    out: torch.Tensor,
) -> None:
    """:func:`gather` with an explicit launch shape (for benchmarks and tuning)."""
    pool = _check_pool(k_layers, v_layers, "gather")
    if pool.torch_path_because:
        kv_copy.gather(k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out)
        return
    if head_count < 1 or head_start < 0 or head_start + head_count > pool.heads:
        raise ValueError(f"gather: head range [{head_start}, {head_start + head_count}) does not fit the rank's {pool.heads} heads")
    _check_page_table(page_table, page_size, num_tokens, pool.device, "gather")
    row = head_count * pool.head_dim
    nbytes = 2 * pool.layers * num_tokens * row * pool.element_size
    out_int = _int_bytes(out, nbytes, pool, "gather", "out")
    if num_tokens == 0:
        return
    row_block = triton.next_power_of_2(row)
    block_t = _block_tokens(row_block, pool.element_size, num_tokens, tile)
    grid = (triton.cdiv(num_tokens, block_t), 2 * pool.layers)
    args = (k_layers[0].view(pool.int_dtype), pool.layer_delta, page_table, out_int, num_tokens, page_size,
            pool.token_stride, pool.head_stride, head_start, head_start * pool.head_stride)
    constants = dict(HEAD_DIM=pool.head_dim, ROW=row, ROW_BLOCK=row_block, BLOCK_T=block_t, DELTA_UNIT=pool.delta_unit,
                     HEADS_PACKED=pool.heads_packed)
    _launch("gather", pool.device, grid, args, constants, tile)


def scatter_tiled(
    tile: TileConfig,
    staging: torch.Tensor,
    writer_destinations: Sequence[tuple[int, int]],
    heads_per_writer: int,
    layers_per_writer: int,
    k_layers: Sequence[torch.Tensor],
    v_layers: Sequence[torch.Tensor],
    page_table: torch.Tensor,
    page_size: int,
    num_tokens: int,
) -> None:
    """:func:`scatter` with an explicit launch shape (for benchmarks and tuning)."""
    pool = _check_pool(k_layers, v_layers, "scatter")
    if pool.torch_path_because:
        kv_copy.scatter(staging, writer_destinations, heads_per_writer, layers_per_writer, k_layers, v_layers,
                        page_table, page_size, num_tokens)
        return
    if not writer_destinations:
        raise ValueError("scatter: writer_destinations is empty; give one (head_start, layer_start) per writer slot")
    if heads_per_writer < 1 or layers_per_writer < 1:
        raise ValueError(f"scatter: heads_per_writer and layers_per_writer must be >= 1, got {heads_per_writer} and {layers_per_writer}")
    for slot, (dst_head, dst_layer) in enumerate(writer_destinations):
        if dst_head < 0 or dst_head + heads_per_writer > pool.heads:
            raise ValueError(f"scatter writer {slot}: heads [{dst_head}, {dst_head + heads_per_writer}) do not fit the rank's {pool.heads} heads")
        if dst_layer < 0 or dst_layer + layers_per_writer > pool.layers:
            raise ValueError(f"scatter writer {slot}: layers [{dst_layer}, {dst_layer + layers_per_writer}) exceed the pool's {pool.layers}")
    _check_page_table(page_table, page_size, num_tokens, pool.device, "scatter")
    writers = len(writer_destinations)
    row = heads_per_writer * pool.head_dim
    nbytes = writers * 2 * layers_per_writer * num_tokens * row * pool.element_size
    staging_int = _int_bytes(staging, nbytes, pool, "scatter", "staging")
    if num_tokens == 0:
        return
    heads = _writer_table(tuple(int(h) for h, _ in writer_destinations), pool.device)
    layers = _writer_table(tuple(int(layer) for _, layer in writer_destinations), pool.device)
    row_block = triton.next_power_of_2(row)
    block_t = _block_tokens(row_block, pool.element_size, num_tokens, tile)
    grid = (triton.cdiv(num_tokens, block_t), 2 * layers_per_writer, writers)
    args = (
        staging_int, k_layers[0].view(pool.int_dtype), pool.layer_delta, heads, layers, page_table,
        num_tokens, page_size, pool.token_stride, pool.head_stride, pool.layers, layers_per_writer,
    )
    constants = dict(HEAD_DIM=pool.head_dim, ROW=row, ROW_BLOCK=row_block, BLOCK_T=block_t, DELTA_UNIT=pool.delta_unit,
                     HEADS_PACKED=pool.heads_packed)
    _launch("scatter", pool.device, grid, args, constants, tile)


def gather(
    k_layers: Sequence[torch.Tensor],
    v_layers: Sequence[torch.Tensor],
    page_table: torch.Tensor,
    page_size: int,
    num_tokens: int,
    head_start: int,
    head_count: int,
    out: torch.Tensor,
) -> None:
    """Copy heads ``[head_start, head_start + head_count)`` of the first
    ``num_tokens`` tokens of ``page_table``, every layer, K then V, into the
    uint8 tensor ``out`` laid out ``[K,V][layer][token][head][dim]``.

    Upholds: bit-exact copy in one launch; the pool is only read; nothing past
    the writer's bytes of ``out`` is written.
    """
    gather_tiled(DEFAULT_TILE, k_layers, v_layers, page_table, page_size, num_tokens, head_start, head_count, out)


def scatter(
    staging: torch.Tensor,
    writer_destinations: Sequence[tuple[int, int]],
    heads_per_writer: int,
    layers_per_writer: int,
    k_layers: Sequence[torch.Tensor],
    v_layers: Sequence[torch.Tensor],
    page_table: torch.Tensor,
    page_size: int,
    num_tokens: int,
) -> None:
    """Copy a whole chunk's staging region (every writer) into the pool.

    Writer ``w``'s part follows the earlier writers' parts and lands in heads
    ``[h, h + heads_per_writer)`` of layers ``[l, l + layers_per_writer)``,
    ``(h, l) = writer_destinations[w]``.  Upholds: bit-exact, one launch,
    nothing but those heads of those tokens is written.
    """
    scatter_tiled(
        DEFAULT_TILE, staging, writer_destinations, heads_per_writer, layers_per_writer,
        k_layers, v_layers, page_table, page_size, num_tokens,
    )
