"""Tiny torch versions of the classifier families onnxsal must differentiate (test-only).

Each has the op patterns of its family (skip connections, dense concatenation, fire modules, inverted
residuals, squeeze-excitation, channel shuffle, LayerNorm/GELU, attention) at a width that keeps
export and gradients fast. `feature` is the module whose output is the last spatial feature map, the
tensor that `layer="auto"` must find.
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZE = 32
CLASSES = 10


def conv_bn(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Head(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNet(nn.Module):
    class Block(nn.Module):
        def __init__(self, cin, cout, s):
            super().__init__()
            self.a, self.b = conv_bn(cin, cout, s=s), conv_bn(cout, cout, act=None)
            self.short = conv_bn(cin, cout, 1, s, act=None) if (s != 1 or cin != cout) else nn.Identity()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.b(self.a(x)) + self.short(x))

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8), nn.MaxPool2d(3, 2, 1))
        self.layer1, self.layer2 = self.Block(8, 8, 1), self.Block(8, 16, 2)
        self.head = Head(16)
        self.feature = self.layer2

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))))


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, CLASSES))
        self.feature = self.features[-1]

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class DenseNet(nn.Module):
    class Layer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, growth, 3, padding=1, bias=False)

        def forward(self, x):
            return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block1 = nn.Sequential(self.Layer(8, 4), self.Layer(12, 4))
        self.trans = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(self.Layer(8, 4), self.Layer(12, 4))
        self.norm = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU())
        self.head = Head(16)
        self.feature = self.norm

    def forward(self, x):
        return self.head(self.norm(self.block2(self.trans(self.block1(self.stem(x))))))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8, s=2))
        self.b1 = conv_bn(8, 4, 1)
        self.b3 = nn.Sequential(conv_bn(8, 4, 1), conv_bn(4, 6, 3))
        self.b5 = nn.Sequential(conv_bn(8, 2, 1), conv_bn(2, 4, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(8, 4, 1))
        self.head = Head(18)
        self.feature = None  # the Concat output

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)
        return self.head(y)


class SqueezeNet(nn.Module):
    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.s = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True))

        def forward(self, x):
            x = self.s(x)
            return torch.cat([self.e1(x), self.e3(x)], 1)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      self.Fire(8, 4, 8), self.Fire(16, 4, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, CLASSES, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))
        self.feature = self.classifier[2]

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class MobileNetV2(nn.Module):
    class Inverted(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            hidden = cin * t
            self.conv = nn.Sequential(conv_bn(cin, hidden, 1, act=nn.ReLU6), conv_bn(hidden, hidden, 3, s, hidden, nn.ReLU6),
                                      conv_bn(hidden, cout, 1, act=None))
            self.residual = s == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, s=2, act=nn.ReLU6), self.Inverted(8, 8, 1, 2), self.Inverted(8, 12, 2, 3),
                                      conv_bn(12, 24, 1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, CLASSES))
        self.feature = self.features[-1]

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c, r, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, r, 1), act(), nn.Conv2d(r, c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class MobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, s=2, act=nn.Hardswish)
        self.block = nn.Sequential(conv_bn(8, 16, 1, act=nn.Hardswish), conv_bn(16, 16, 3, 2, 16, nn.Hardswish),
                                   SqueezeExcite(16, 4, gate=nn.Hardsigmoid), conv_bn(16, 12, 1, act=None))
        self.last = conv_bn(12, 24, 1, act=nn.Hardswish)
        self.classifier = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, CLASSES))
        self.feature = self.last

    def forward(self, x):
        x = self.last(self.block(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class EfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, s=2, act=nn.SiLU)
        self.mb = nn.Sequential(conv_bn(8, 32, 1, act=nn.SiLU), conv_bn(32, 32, 5, 1, 32, nn.SiLU), SqueezeExcite(32, 4, act=nn.SiLU),
                                conv_bn(32, 8, 1, act=None))
        self.top = conv_bn(8, 32, 1, act=nn.SiLU)
        self.head = Head(32)
        self.feature = self.top

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.top(x + self.mb(x)))


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNet(nn.Module):
    class Unit(nn.Module):
        def __init__(self, c):
            super().__init__()
            half = c // 2
            self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, 1, half, act=None), conv_bn(half, half, 1))

        def forward(self, x):
            a, b = x.chunk(2, dim=1)
            return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, s=2), nn.MaxPool2d(3, 2, 1))
        self.units = nn.Sequential(self.Unit(16), self.Unit(16))
        self.conv5 = conv_bn(16, 32, 1)
        self.fc = nn.Linear(32, CLASSES)
        self.feature = self.conv5

    def forward(self, x):
        x = self.conv5(self.units(self.stem(x)))
        return self.fc(x.mean([2, 3]))


class RegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, s=2)
        self.a = conv_bn(16, 16, 1)
        self.b = conv_bn(16, 16, 3, 2, groups=4)
        self.se = SqueezeExcite(16, 4)
        self.c = conv_bn(16, 16, 1, act=None)
        self.proj = conv_bn(16, 16, 1, 2, act=None)
        self.relu = nn.ReLU()
        self.head = Head(16)
        self.feature = self.relu

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.relu(self.proj(x) + self.c(self.se(self.b(self.a(x))))))


class ConvNeXt(nn.Module):
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c, eps=1e-6)
            self.pw1, self.act, self.pw2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.full((c,), 0.5))

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.gamma * self.pw2(self.act(self.pw1(self.norm(y))))
            return x + y.permute(0, 3, 1, 2)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.block = self.Block(16)
        self.norm = nn.LayerNorm(16, eps=1e-6)
        self.fc = nn.Linear(16, CLASSES)
        self.feature = self.block

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.fc(self.norm(x.mean([-2, -1])))


class ViT(nn.Module):
    def __init__(self, dim=16, heads=2, patch=8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (SIZE // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.1)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)
        self.feature = self.ln1  # tokens [N, 1 + 4*4, dim] into the last attention: what `auto` picks for CAMs

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(self.norm(x)[:, 0])


FAMILIES = {
    "resnet": ResNet, "vgg": VGG, "densenet": DenseNet, "inception": Inception, "squeezenet": SqueezeNet,
    "mobilenet_v2": MobileNetV2, "mobilenet_v3": MobileNetV3, "efficientnet": EfficientNet, "shufflenet": ShuffleNet,
    "regnet": RegNet, "convnext": ConvNeXt, "vit": ViT,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """A family's tiny model in eval mode, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_batchnorm(FAMILIES[name]())


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """`model` in eval mode with non-trivial BatchNorm statistics and affine parameters (drawn from torch's RNG)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def export(model: nn.Module, exporter: str, batch: int = 1, opset: int | None = None, dynamic: bool = False,
           dynamic_size: bool = False, **kwargs) -> bytes:
    """ONNX bytes from torch's TorchScript ('torchscript') or dynamo ('dynamo') exporter.

    dynamic: symbolic batch axis; dynamic_size (TorchScript only): symbolic height and width too.
    """
    x = torch.randn(batch, 3, SIZE, SIZE)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), f, dynamo=True, opset_version=opset or 18, input_names=["image"],
                              output_names=["logits"], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None, **kwargs)
        else:
            axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
            torch.onnx.export(model, (x,), f, dynamo=False, opset_version=opset or 17, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": axes} if (dynamic or dynamic_size) else None,
                              **kwargs)
    return f.getvalue()


def torch_gradients(model: nn.Module, x, seed, feature: nn.Module | None):
    """(logits, d sum(seed*logits)/dx, feature activation, its gradient) by torch autograd."""
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    handle = feature.register_forward_hook(hook) if feature is not None else None
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    logits = model(xt)
    (logits * torch.as_tensor(seed)).sum().backward()
    if handle is not None:
        handle.remove()
    a = store.get("a")
    return (logits.detach().numpy(), xt.grad.numpy(),
            None if a is None else a.detach().numpy(), None if a is None else a.grad.numpy())
