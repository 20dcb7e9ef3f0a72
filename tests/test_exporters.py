"""Patterns the common exporters write, each a kind of failure once (issue 9), against an oracle.

- sizes shape inference cannot derive (class-token Expand + Concat): finite differences;
- attention with the batch on axis 1 (nn.MultiheadAttention / nn.TransformerEncoderLayer with
  batch_first False packs q, k, v as [3, L, N, E]) and class tokens, exported by both torch exporters:
  torch autograd at batch sizes 1 and 3, cosine >= 0.9999;
- the same exported with a fixed batch of one (batch baked into constants off axis 0): re-batched.
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
