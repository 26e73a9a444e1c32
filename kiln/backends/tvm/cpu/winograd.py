"""3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3).

A direct 3×3 convolution makes 9 multiply-adds per output and input channel; Winograd's F(2×2, 3×3)
makes 4, so on a CPU whose direct convolution already runs at its FMA peak (ResNet-18's do) it is
the only way to go faster. Each 4×4 input tile d becomes V = Bᵀ d B and each 3×3 filter g becomes
U = G g Gᵀ (at compile time: the weights are constants), the 16 positions of a tile become 16
independent matmuls M[t] = V[t] · U[t] over the input channels (the bulk of the work, tiled by
`schedules.py` like any matmul, U read as packed panels), and each output tile is Aᵀ M A.
F(2×2, 3×3)'s matrices hold only 0, ±1 and ±½, so its rounding error stays near the direct
convolution's (larger tiles, F(4×4, 3×3), trade accuracy for speed).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi

TILE = 2  # outputs per tile side
ALPHA = TILE + 2  # inputs per tile side
POSITIONS = ALPHA * ALPHA
# block names schedules.py and pack_weights.py look for; each transform is two blocks, Bᵀ·d (or
# M·A) and then the other side, so an unrolled position is a few additions of small expressions (one
# block held all 16 positions' coefficients: 64 padded loads in nested selects, which TVM's
# simplifiers rewrote once per unrolled position: 0.33-0.53 s of TIR lowering per ResNet-18 kernel)
INPUT_ROWS, INPUT_TRANSFORM, MATMUL = "winograd_input_rows", "winograd_input", "winograd_matmul"
OUTPUT_COLUMNS, OUTPUT_TRANSFORM = "winograd_output_columns", "winograd_output"

_FILTER = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # G


def _input_rows(d: list, row):
    """Row `row` of Bᵀ·d for four values d (Bᵀ = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]])."""
    return tirx.Select(row == 0, d[0] - d[2], tirx.Select(row == 1, d[1] + d[2], tirx.Select(row == 2, d[2] - d[1], d[1] - d[3])))


def _output_rows(m: list, row):
    """Row `row` of Aᵀ·m for four values m (Aᵀ = [[1,1,1,0], [0,1,-1,-1]])."""
    return tirx.Select(row == 0, m[0] + m[1] + m[2], m[1] - m[2] - m[3])


def applies(weight_shape: tuple[int, ...], strides, dilation) -> bool:
    """HWIO 3×3 weights, stride 1, no dilation (the caller has ruled out groups)."""
    return tuple(weight_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilation) == (1, 1)


def transformed_panels(weight: np.ndarray, width: int) -> np.ndarray:
    """U = G g Gᵀ of every HWIO filter, as panels [O/width, 16, I, width] (one per tile position),
    computed in float64 and rounded once. U[a, b] = Σᵢⱼ G[a, i] g[i, j] G[b, j] is one matmul by
    G ⊗ G (16 × 9): a sixth of the time numpy's einsum takes for the same sum."""
    channels_in, channels_out = weight.shape[2], weight.shape[3]
    u = (np.kron(_FILTER, _FILTER) @ weight.reshape(9, -1).astype(np.float64)).astype(weight.dtype)
    u = u.reshape(POSITIONS, channels_in, channels_out // width, width)
    return np.ascontiguousarray(np.moveaxis(u, 2, 0))


def _tiles(shape, padding) -> tuple[int, int, int, int]:
    """Output height and width, and tiles along each, of an NHWC input `shape`."""
    top, left, bottom, right = (int(p) for p in padding)
    _, height, width, _ = (int(d) for d in shape)
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    return out_h, out_w, -(-out_h // TILE), -(-out_w // TILE)


def tile_count(shape, padding) -> int:
    """Tiles of the whole batch: the rows of the 16 matmuls."""
    *_, tiles_h, tiles_w = _tiles(shape, padding)
    return int(shape[0]) * tiles_h * tiles_w


def conv2d_nhwc(x: te.Tensor, panels: te.Tensor, padding) -> te.Tensor:
    """NHWC 3×3 stride-1 convolution of `x` by weights transformed with `transformed_panels`."""
    top, left, bottom, right = (int(p) for p in padding)
    batch, height, width, channels_in = (int(d) for d in x.shape)
    out_h, out_w, tiles_h, tiles_w = _tiles(x.shape, padding)
    tiles = batch * tiles_h * tiles_w
    # the last tiles read past the padded input: zeros there only reach outputs that are cropped
    extra_h, extra_w = tiles_h * TILE + 2 - (height + top + bottom), tiles_w * TILE + 2 - (width + left + right)
    padded = topi.nn.pad(x, [0, top, left, 0], [0, bottom + extra_h, right + extra_w, 0], name="pad")

    def tile_input(p, a, b, ci):
        n, rest = p // (tiles_h * tiles_w), p % (tiles_h * tiles_w)
        return padded[n, (rest // tiles_w) * TILE + a, (rest % tiles_w) * TILE + b, ci]

    rows = te.compute(  # Bᵀ·d: rows[r, b] = Σₐ Bᵀ[r, a] d[a, b]
        (ALPHA, ALPHA, tiles, channels_in),
        lambda r, b, p, ci: _input_rows([tile_input(p, a, b, ci) for a in range(ALPHA)], r),
        name=INPUT_ROWS,
    )
    transformed = te.compute(  # (Bᵀ·d)·B at position t = (r, c): Σ_b rows[r, b] Bᵀ[c, b]
        (POSITIONS, tiles, channels_in),
        lambda t, p, ci: _input_rows([rows[t // ALPHA, b, p, ci] for b in range(ALPHA)], t % ALPHA),
        name=INPUT_TRANSFORM,
    )
    width_panel = int(panels.shape[3])
    k = te.reduce_axis((0, channels_in), name="k")
    products = te.compute(
        (POSITIONS, tiles, int(panels.shape[0]) * width_panel),
        lambda t, p, co: te.sum(transformed[t, p, k] * panels[co // width_panel, t, k, co % width_panel], axis=k),
        name=MATMUL,
    )

    columns = te.compute(  # M·A: columns[a, c] = Σ_b M[a, b] Aᵀ[c, b]
        (ALPHA, TILE, tiles, int(products.shape[2])),
        lambda a, c, p, co: _output_rows([products[a * ALPHA + b, p, co] for b in range(ALPHA)], c),
        name=OUTPUT_COLUMNS,
    )

    def output(n, h, w, co):  # Aᵀ·(M·A)
        p = n * tiles_h * tiles_w + (h // TILE) * tiles_w + w // TILE
        return _output_rows([columns[a, w % TILE, p, co] for a in range(ALPHA)], h % TILE)

    return te.compute((batch, out_h, out_w, int(products.shape[2])), output, name=OUTPUT_TRANSFORM)
