"""Pictures against independent references: colormaps against matplotlib's (a test-only oracle), percentile
clipping against numpy's percentile, overlays against the blending formula written out here, the resize
against torch's interpolate, and the grid's tile positions found by colour in the sheet."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from onnxsal import viz

R = np.random.default_rng(12)


def mpl_table(name, n=256):
    """matplotlib's colormap at n evenly spaced points, as 0..255 integers."""
    return np.round(np.asarray(matplotlib.colormaps[name](np.linspace(0, 1, n)))[:, :3] * 255).astype(int)


# -- colormaps -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs", [("gray", "gray"), ("rdbu", "RdBu_r")])
def test_gray_and_rdbu_equal_matplotlibs_tables(ours, theirs):
    # RdBu_r: ColorBrewer's 11-class RdBu from blue (negative) through white to red (positive)
    np.testing.assert_array_equal(viz.colormap(ours).astype(int), mpl_table(theirs))


@pytest.mark.parametrize("name", ["inferno", "viridis", "jet"])
def test_inferno_viridis_and_jet_equal_matplotlibs_tables(name):
    # every one of the 256 entries, rounded to the nearest level
    np.testing.assert_array_equal(viz.colormap(name).astype(int), mpl_table(name))


@pytest.mark.parametrize("name,first,last", [("viridis", "440154", "fde725"), ("inferno", "000004", "fcffa4"),
                                             ("jet", "000080", "800000")])
def test_colormap_ends_are_the_documented_colours(name, first, last):
    # the published end colours (viridis #440154 to #fde725, inferno #000004 to #fcffa4, jet dark blue to dark red)
    lut = viz.colormap(name)
    assert (bytes(lut[0]).hex(), bytes(lut[255]).hex()) == (first, last)


def test_jet_follows_its_segment_data_by_hand():
    # matplotlib's jet: red ramps 0 -> 1 over [0.35, 0.66], green over [0.125, 0.375], blue 0.5 -> 1 over [0, 0.11]
    lut = viz.colormap("jet").astype(int)
    i = 127  # t = 127/255 = 0.49804: red (0.49804 - 0.35) / 0.31 = 0.47754 -> 121.8; green 1; blue (0.65 - t) / 0.31
    assert tuple(lut[i]) == (122, 255, 125)  # blue: (0.65 - 0.49804) / 0.31 * 255 = 124.99 -> 125


def test_normalize_clips_at_the_99th_percentile_by_default():
    maps = R.uniform(0, 1, (1, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(viz.normalize(maps, False)[0], np.clip(maps[0] / np.percentile(maps[0], 99), 0, 1), rtol=1e-6)


# -- percentile clipping ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["numpy", "numba"])
@pytest.mark.parametrize("signed,q", [(False, 99.0), (True, 99.0), (False, 100.0), (True, 90.0)])
def test_percentile_clipping(engine, signed, q, monkeypatch):
    from onnxsal.kernels import jit

    monkeypatch.setattr(jit, "FORCE_NUMPY", engine == "numpy")
    monkeypatch.setattr(jit, "NUMPY_BELOW", 0)
    maps = (R.standard_normal((3, 17, 23)) ** 3).astype(np.float32)
    maps[2] = 0.0
    got = viz.normalize(maps, signed, q)
    for m, g in zip(maps, got):
        p = np.percentile(np.abs(m.astype(np.float64)), q)
        want = np.zeros_like(m) if p == 0 else np.clip(m / p, -1.0 if signed else 0.0, 1.0)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


# -- maps and overlays -------------------------------------------------------------------------------------------

def entry(values, signed):
    """Index into a 256-entry table: [0, 1] (or [-1, 1] mapped to [0, 1]) to the nearest entry."""
    t = (values + 1) / 2 if signed else values
    return np.clip(np.floor(t * 255 + 0.5), 0, 255).astype(int)


def test_unknown_colormap_names_the_choices():
    from onnxsal.errors import InputError

    with pytest.raises(InputError, match=r"unknown colormap 'plasma'; choose one of inferno, viridis, jet, gray, rdbu$"):
        viz.colormap("plasma")


def test_render_map():
    v = R.uniform(0, 1, (9, 11)).astype(np.float32)
    v[0, :3] = [0.0, 1.0, 0.5 / 255 - 1e-4]  # the ends of the table, and a value just below entry 0's upper edge
    got = np.asarray(viz.render_map(v, signed=False)).astype(int)
    np.testing.assert_array_equal(got, np.repeat(entry(v, False)[..., None], 3, axis=2))
    s = R.uniform(-1, 1, (9, 11)).astype(np.float32)
    s[0, :2] = [-1.0, 1.0]
    got = np.asarray(viz.render_map(s, signed=True)).astype(int)
    np.testing.assert_array_equal(got, mpl_table("RdBu_r")[entry(s, True)])
    got = np.asarray(viz.render_map(v, signed=False, cmap="viridis")).astype(int)
    np.testing.assert_array_equal(got, viz.colormap("viridis").astype(int)[entry(v, False)])


def assert_pixels(got, want, stray=0.0, exact=0.98):
    """At most one level off (float rounding), nearly every pixel exact (fewer where an opacity of 0.5 puts many
    values on x.5); a `stray` fraction of values may be further off (a value on the border between two colormap
    entries after a resize)."""
    diff = np.abs(np.asarray(got).astype(int) - np.floor(np.asarray(want) + 0.5).astype(int))
    assert (diff > 1).mean() <= stray and (diff == 0).mean() > exact, (diff.max(), (diff > 1).mean(), (diff == 0).mean())


def photo(h=20, w=30):
    return Image.fromarray(R.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_smooth_overlay_blends_the_colormap_at_constant_opacity(alpha):
    im, v = photo(), R.uniform(0, 1, (20, 30)).astype(np.float32)
    colors = viz.colormap("jet").astype(np.float64)[entry(v, False)]
    want = (1 - alpha) * np.asarray(im, np.float64) + alpha * colors
    assert_pixels(viz.overlay(im, v, signed=False, alpha=alpha, smooth=True), want)


@pytest.mark.parametrize("signed", [False, True])
def test_pixel_overlay_dims_the_photo_and_shows_strength(signed):
    # photo: half colour, half its gray, darkened by 1 - 0.75 alpha; colormap opacity sqrt(|v|) (|v| when signed)
    alpha = 0.6  # the default
    pixels = R.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    pixels[0, :4] = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (1, 1, 1)]
    im = Image.fromarray(pixels)
    v = R.uniform(-1 if signed else 0, 1, (20, 30)).astype(np.float32)
    v[:5] = 0.0  # where the map is zero the dimmed photo shows alone
    p = np.asarray(im, np.float64)
    dimmed = (0.5 * p + 0.5 * p.mean(axis=2, keepdims=True)) * (1 - 0.75 * alpha)
    weight = (np.abs(v) if signed else np.sqrt(v))[..., None]
    colors = (mpl_table("RdBu_r") if signed else viz.colormap("inferno").astype(int))[entry(v, signed)]
    want = (1 - weight) * dimmed + weight * colors
    got = viz.overlay(im, v, signed=signed)  # defaults: alpha 0.6, not smooth
    assert_pixels(got, want)
    np.testing.assert_array_equal(np.asarray(got)[:5], np.floor(dimmed[:5] + 0.5).astype(np.uint8))


def test_overlay_resizes_the_map_to_the_photo_with_half_pixel_bilinear():
    im, v = photo(40, 36), R.uniform(0, 1, (10, 9)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(v)[None, None], size=(40, 36), mode="bilinear",
                                         align_corners=False)[0, 0].numpy()
    colors = viz.colormap("jet").astype(np.float64)[entry(up, False)]
    want = 0.5 * np.asarray(im, np.float64) + 0.5 * colors
    assert_pixels(viz.overlay(im, v, signed=False, alpha=0.5, smooth=True), want)


# -- grid ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count,columns,tile,title", [(7, 3, 40, "a title"), (2, 5, 40, None), (1, 1, 40, None),
                                                      (7, None, None, None)])
def test_grid_puts_tiles_in_rows_in_order(count, columns, tile, title):
    defaults = columns is None  # grid's defaults: 5 columns of 224-pixel tiles
    columns, tile = (5, 224) if defaults else (columns, tile)
    colours = [(200, 30 * k % 256, 255 - 20 * k) for k in range(count)]
    tiles = [Image.new("RGB", (10 + k, 12), c) for k, c in enumerate(colours)]  # any size: each is scaled to the tile
    labels = [f"m{k}" for k in range(count)]
    made = viz.grid(tiles, labels) if defaults else viz.grid(tiles, labels, columns=columns, tile=tile, title=title)
    sheet = np.asarray(made).astype(int)
    for corner in (sheet[0, 0], sheet[-1, -1], sheet[0, -1], sheet[-1, 0]):
        assert tuple(corner) == (255, 255, 255)  # a white sheet, so the black labels read
    boxes = []
    for c in colours:
        ys, xs = np.nonzero((sheet == c).all(axis=2))
        assert len(ys) == tile * tile, "each tile is exactly tile x tile pixels of its colour"
        top, left = ys.min(), xs.min()
        assert (ys.max() - top, xs.max() - left) == (tile - 1, tile - 1)
        boxes.append((top, left))
    per_row = min(columns, count)
    rows = [boxes[i:i + per_row] for i in range(0, count, per_row)]
    assert len(rows) == -(-count // per_row)
    for row in rows:
        assert len({top for top, _ in row}) == 1  # a row shares its top edge
        lefts = [left for _, left in row]
        assert lefts == sorted(lefts) and len(set(np.diff(lefts))) <= 1  # left to right, evenly spaced
        assert all(b - a > tile for a, b in zip(lefts, lefts[1:]))  # no overlap, a gap between tiles
    assert [r[0][1] for r in rows] == [rows[0][0][1]] * len(rows)  # rows start at the same column
    tops = [r[0][0] for r in rows]
    assert all(b - a > tile for a, b in zip(tops, tops[1:]))
    height, width = sheet.shape[:2]
    assert width > per_row * tile and width - (rows[0][-1][1] + tile) < tile  # no empty column at the right
    assert height - (tops[-1] + tile) < tile
    for top, left in boxes:  # a label (dark text) above each tile
        above = sheet[max(0, top - 20):top, left:left + tile]
        assert (above.sum(axis=2) < 300).any()
    if title:  # the title line sits above the first row's labels
        assert (sheet[:tops[0] - 20].sum(axis=2) < 300).any()
