"""Patterns the common exporters write, each a kind of failure once (issue 9), against an oracle.

- sizes shape inference cannot derive (class-token Expand + Concat): finite differences;
- attention with the batch on axis 1 (nn.MultiheadAttention / nn.TransformerEncoderLayer with
  batch_first False packs q, k, v as [3, L, N, E]) and class tokens, exported by both torch exporters:
  torch autograd at batch sizes 1 and 3, cosine >= 0.9999;
- the same exported with a fixed batch of one (batch baked into constants off axis 0): re-batched;
- a Swin-style block (torch.roll as Slice + Concat, window partition reshapes, relative position bias
  Gather, shifted-window mask, channels-last layers), both exporters, dynamic batch and a batch of one;
- a MaxViT-style stage (MBConv with squeeze-excitation, block and grid attention written with einsum).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from onnx import helper

import torch_models as tm
from oracles import Case, cosine, fd_check, max_rel_err
from onnxsal.graph import load_model
from onnxsal.runtime import Engine

N = helper.make_node
R = np.random.default_rng(99)


def test_class_token_expand_and_concat_with_sizes_inference_cannot_derive():
    # e = Expand(token, shape) with shape = Shape(x) passed through a float Cast (onnx data propagation stops
    # there, so e's sizes are unknown); y = Concat([e, x], axis=1) * w: Concat backward needs e's size on axis 1
    case = Case(
        "Expand-Concat-unknown-sizes",
        [N("Shape", ["x"], ["s"]), N("Cast", ["s"], ["sf"], to=1), N("Cast", ["sf"], ["si"], to=7),
         N("Mul", ["si", "keep"], ["s1"]), N("Max", ["s1", "ones"], ["shape"]),  # (N, 1, E): token per sample
         N("Expand", ["token", "shape"], ["e"]), N("Concat", ["e", "x"], ["c"], axis=1), N("Mul", ["c", "w"], ["y"])],
        {"x": R.standard_normal((2, 4, 3)), "token": R.standard_normal((1, 1, 3))},
        {"keep": np.array([1, 0, 1], np.int64), "ones": np.array([1, 1, 1], np.int64), "w": R.standard_normal((5, 3))},
    )
    from oracles import make_model

    shapes = {vi.name: vi for vi in make_model(case, np.float32).graph.value_info}
    dims = shapes["e"].type.tensor_type.shape.dim
    assert not all(d.HasField("dim_value") for d in dims), "the test needs a size shape inference cannot derive"
    fd_check(case)


@pytest.mark.parametrize("start,end", [(1, 3), (-2, 100), (0, -1), (2, 2)])
def test_slice_of_an_axis_whose_size_inference_cannot_derive(start, end):
    # e = Expand(token, (N, 1, E)) as above (sizes unknown to inference); y = e[:, :, start:end] * sum(x) per sample
    case = Case(
        f"Slice-unknown-size-{start}-{end}",
        [N("Shape", ["x"], ["s"]), N("Cast", ["s"], ["sf"], to=1), N("Cast", ["sf"], ["si"], to=7),
         N("Mul", ["si", "keep"], ["s1"]), N("Max", ["s1", "ones"], ["shape"]),
         N("Expand", ["token", "shape"], ["e"]), N("Slice", ["e", "st", "en", "ax"], ["c"]),
         N("ReduceSum", ["x", "ax12"], ["r"]), N("Mul", ["c", "r"], ["y"])],
        {"x": R.standard_normal((2, 4, 3)), "token": R.standard_normal((1, 1, 3))},
        {"keep": np.array([1, 0, 1], np.int64), "ones": np.array([1, 1, 1], np.int64), "st": np.array([start], np.int64),
         "en": np.array([end], np.int64), "ax": np.array([2], np.int64), "ax12": np.array([1, 2], np.int64)},
    )
    fd_check(case)


class TinyViT(nn.Module):
    """Patch embedding, class token (Expand + Concat), position embedding, one attention block, head on the token."""

    def __init__(self, batch_first: bool, encoder_layer: bool, dim: int = 16, heads: int = 2, patch: int = 8):
        super().__init__()
        self.batch_first = batch_first
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (tm.SIZE // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.1)
        if encoder_layer:
            self.block = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu",
                                                    batch_first=batch_first, norm_first=True)
        else:
            self.block = None
            self.ln = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tm.CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        if not self.batch_first:
            x = x.transpose(0, 1)  # (L, N, E)
        if self.block is not None:
            x = self.block(x)
        else:
            h = self.ln(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.head(self.norm(x)[:, 0])


VITS = [(True, False), (False, False), (False, True)]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("batch_first,encoder_layer", VITS, ids=["mha-batch-first", "mha-seq-first", "encoder-seq-first"])
def test_vit_like_models_match_torch_autograd_at_batch_1_and_3(batch_first, encoder_layer, exporter):
    torch.manual_seed(0)
    model = TinyViT(batch_first, encoder_layer).eval()
    # a dynamic batch axis; torch.export specialises an example batch of 1, so dynamo exports with 2
    data = tm.export(model, exporter, batch=2 if exporter == "dynamo" else 1, dynamic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to one sample at a time
        graph = load_model(data)
        engine = Engine(graph)
    assert graph.batchable
    for batch in (1, 3):
        x = R.standard_normal((batch, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
        seed = R.standard_normal((batch, tm.CLASSES)).astype(np.float32)
        out = engine.gradients(x, seed)
        logits, gx, _, _ = tm.torch_gradients(model, x, seed, None)
        assert cosine(out.scores, logits) >= 0.9999
        c, r = cosine(out.input_grad, gx), max_rel_err(out.input_grad, gx)
        assert c >= 0.9999 and r <= 1e-3, f"batch {batch}: cosine {c:.7f}, max relative error {r:.2e}"


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("batch_first,encoder_layer", VITS, ids=["mha-batch-first", "mha-seq-first", "encoder-seq-first"])
def test_exports_with_a_fixed_batch_of_one_are_rebatched(batch_first, encoder_layer, exporter):
    # no dynamic axes: the class token is a folded [1, 1, C] constant and attention reshapes hold N * heads
    # and L * N as numbers; before, such a model ran one sample at a time
    torch.manual_seed(1)
    model = TinyViT(batch_first, encoder_layer).eval()
    data = tm.export(model, exporter)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = load_model(data)
        engine = Engine(graph)
    assert graph.batchable and engine.batch_size > 1
    x = R.standard_normal((3, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
    seed = R.standard_normal((3, tm.CLASSES)).astype(np.float32)
    out = engine.gradients(x, seed)
    _, gx, _, _ = tm.torch_gradients(model, x, seed, None)
    c, r = cosine(out.input_grad, gx), max_rel_err(out.input_grad, gx)
    assert c >= 0.9999 and r <= 1e-3, f"cosine {c:.7f}, max relative error {r:.2e}"


class TinySwin(nn.Module):
    """Swin-style block: channels-last patches, cyclic shift (torch.roll: Slice + Concat), window partition,
    relative position bias gathered from a table, a shifted-window mask, head on the mean of the final norm."""

    def __init__(self, dim=16, heads=2, window=4, shift=2):
        super().__init__()
        self.w, self.s, self.heads = window, shift, heads
        self.patch = nn.Conv2d(3, dim, 4, 4)  # 32 x 32 -> 8 x 8 patches, channels last below
        self.norm1 = nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.1)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        windows = (8 // window) ** 2
        self.register_buffer("mask", (torch.rand(windows, window * window, window * window) > 0.7).float() * -100.0)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tm.CLASSES)

    def forward(self, x):
        w, s, heads = self.w, self.s, self.heads
        x = self.patch(x).permute(0, 2, 3, 1)
        n, hh, ww, c = x.shape
        h = torch.roll(self.norm1(x), shifts=(-s, -s), dims=(1, 2))
        h = h.view(n, hh // w, w, ww // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        b = h.shape[0]
        qkv = self.qkv(h).reshape(b, w * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.table[self.index.view(-1)].view(w * w, w * w, heads).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        windows = self.mask.shape[0]
        attn = attn.view(b // windows, windows, heads, w * w, w * w) + self.mask[None, :, None]
        attn = attn.view(-1, heads, w * w, w * w).softmax(-1)
        h = self.proj((attn @ v).transpose(1, 2).reshape(b, w * w, c))
        h = h.view(n, hh // w, ww // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, hh, ww, c)
        x = x + torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x).mean((1, 2)))


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "batch-of-one"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_swin_like_model_matches_torch_autograd_and_gets_a_channels_last_cam(exporter, dynamic):
    torch.manual_seed(0)
    model = TinySwin().eval()
    data = tm.export(model, exporter, dynamic=dynamic, batch=2 if (dynamic and exporter == "dynamo") else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = load_model(data)
        engine = Engine(graph)
    assert graph.batchable
    from onnxsal.graph import select_layer

    layer = select_layer(graph, "auto")  # the final norm, [N, 8, 8, C] channels-last
    assert layer.layout == "NHWC" and layer.spatial == (8, 8)
    for batch in (1, 3):
        x = R.standard_normal((batch, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
        seed = R.standard_normal((batch, tm.CLASSES)).astype(np.float32)
        out = engine.gradients(x, seed, layers=[layer.tensor])
        _, gx, act, gact = tm.torch_gradients(model, x, seed, model.norm)
        assert cosine(out.input_grad, gx) >= 0.9999 and max_rel_err(out.input_grad, gx) <= 1e-3
        assert cosine(out.activations[layer.tensor], act) >= 0.9999
        assert cosine(out.layer_grads[layer.tensor], gact) >= 0.9999


class TinyMaxViT(nn.Module):
    """MaxViT-style stage: MBConv with squeeze-excitation, then block attention (local P x P windows) and grid
    attention (a G x G grid spread over the image), each with relative position bias; q k^T and attn v as einsum."""

    def __init__(self, dim=16, heads=2, part=4):
        super().__init__()
        self.p, self.heads = part, heads
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU())  # 32 -> 16
        self.mb = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.BatchNorm2d(2 * dim), nn.GELU(),
                                nn.Conv2d(2 * dim, 2 * dim, 3, 2, 1, groups=2 * dim), nn.BatchNorm2d(2 * dim), nn.GELU(),
                                tm.SqueezeExcite(2 * dim, 4, act=nn.SiLU), nn.Conv2d(2 * dim, dim, 1))  # 16 -> 8
        self.down = nn.Conv2d(dim, dim, 1, 2)
        self.attn = nn.ModuleList()
        for _ in range(2):  # block, then grid
            self.attn.append(nn.ModuleDict({"norm": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim),
                                            "mlp_norm": nn.LayerNorm(dim), "mlp": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))}))
        self.table = nn.Parameter(torch.randn(2, (2 * part - 1) ** 2, heads) * 0.1)
        coords = torch.stack(torch.meshgrid(torch.arange(part), torch.arange(part), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + part - 1
        self.register_buffer("index", (rel[..., 0] * (2 * part - 1) + rel[..., 1]).flatten())
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tm.CLASSES)
        self.feature = nn.Identity()  # the last feature map, (N, C, 8, 8): what `auto` picks

    def partition(self, x, grid):  # (N, C, H, W) -> (N, windows, P*P, C)
        n, c, h, w = x.shape
        p = self.p
        if grid:  # pixels p apart in a window: (N, C, P, H/P, P, W/P) -> windows over (H/P, W/P)
            x = x.view(n, c, p, h // p, p, w // p).permute(0, 3, 5, 2, 4, 1)
        else:
            x = x.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, -1, p * p, c)

    def unpartition(self, x, grid, h, w):
        n, _, _, c = x.shape
        p = self.p
        if grid:
            return x.view(n, h // p, w // p, p, p, c).permute(0, 5, 3, 1, 4, 2).reshape(n, c, h, w)
        return x.view(n, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)

    def forward(self, x):
        x = self.stem(x)
        x = self.down(x) + self.mb(x)
        n, c, h, w = x.shape
        for k, layer in enumerate(self.attn):
            t = self.partition(x, grid=k == 1)  # (N, G, T, C)
            g, tokens = t.shape[1], t.shape[2]
            qkv = layer["qkv"](layer["norm"](t)).view(n, g, tokens, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
            q, kk, v = qkv[0], qkv[1], qkv[2]  # (N, G, heads, T, d)
            a = torch.einsum("bghid,bghjd->bghij", q * (c // self.heads) ** -0.5, kk)
            bias = self.table[k][self.index].view(tokens, tokens, self.heads).permute(2, 0, 1)
            a = (a + bias).softmax(-1)
            o = torch.einsum("bghij,bghjd->bghid", a, v).transpose(2, 3).reshape(n, g, tokens, c)
            t = t + layer["proj"](o)
            t = t + layer["mlp"](layer["mlp_norm"](t))
            x = self.unpartition(t, k == 1, h, w)
        return self.head(self.norm(self.feature(x).mean((2, 3))))


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "batch-of-one"])
def test_maxvit_like_model_with_einsum_attention_matches_torch_autograd(dynamic):
    # TorchScript only: torch 2.13's dynamo exporter fails on this model in its own constant folding
    torch.manual_seed(0)
    model = TinyMaxViT().eval()
    data = tm.export(model, "torchscript", dynamic=dynamic)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = load_model(data)
        engine = Engine(graph)
    assert graph.batchable and "Einsum" in {n.op_type for n in graph.graph.node}
    from onnxsal.graph import select_layer

    layer = select_layer(graph, "auto")  # the map folded back from grid attention (a Reshape, tagged from its shape)
    assert layer.layout == "NCHW" and layer.spatial == (8, 8)
    for batch in (1, 3):
        x = R.standard_normal((batch, 3, tm.SIZE, tm.SIZE)).astype(np.float32)
        seed = R.standard_normal((batch, tm.CLASSES)).astype(np.float32)
        out = engine.gradients(x, seed, layers=[layer.tensor])
        _, gx, act, gact = tm.torch_gradients(model, x, seed, model.feature)
        assert cosine(out.input_grad, gx) >= 0.9999 and max_rel_err(out.input_grad, gx) <= 1e-3
        assert cosine(out.activations[layer.tensor], act) >= 0.9999
        assert cosine(out.layer_grads[layer.tensor], gact) >= 0.9999
