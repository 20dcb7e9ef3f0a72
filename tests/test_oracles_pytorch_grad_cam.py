"""Every CAM variant against pytorch-grad-cam (Gildenblat et al.) on the same torch weights.

pytorch-grad-cam needs torchvision and OpenCV, which the test extras leave out (torchvision alone is GBs), so
this file skips in CI; run it where they are installed (see README, "Testing"):

    pip install torch==2.14.1 torchvision==0.29.1 grad-cam && python -m pytest tests/test_oracles_pytorch_grad_cam.py

The model keeps the explained layer at the input's resolution (stride 1 throughout, a flatten + linear head so the
layer gradient varies across positions), so neither library resizes: pytorch-grad-cam's `scale_cam_image` resizes
to the same size (a copy) and onnxsal's upsampling is the identity. Both maps are then compared after
pytorch-grad-cam's own display normalisation, (m - min) / (1e-7 + max(m - min)) per image, which is the only
post-processing it applies.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pgc = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam is not installed (it needs torchvision and "
                          "OpenCV; pip install torchvision grad-cam to run this oracle)")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from onnxsal import Explainer  # noqa: E402

SIZE, CLASSES = 10, 6
R = np.random.default_rng(7)
X = R.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
TARGETS = [1, 4]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(8 * SIZE * SIZE, CLASSES)
        with torch.no_grad():
            self.fc.weight.mul_(30.0)  # maps of order 1, so float32 rounding stays far below the tolerance

    def forward(self, x):
        a = self.act(self.c2(torch.relu(self.c1(x))))  # the explained layer: (N, 8, SIZE, SIZE)
        return self.fc(torch.flatten(a, 1))


@pytest.fixture(scope="module")
def models():
    net = Net().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(X[:1]),), f, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    ex = Explainer(f.getvalue())
    assert ex.layer.shape[-2:] == (SIZE, SIZE)  # the ReLU after c2, found by layer="auto"
    return net, ex


def display(m):
    """pytorch-grad-cam's post-processing without the resize: scale_cam_image, (m - min) / (1e-7 + max) per image,
    applied twice (once per layer, once after averaging the layers)."""
    for _ in range(2):
        m = m - m.min(axis=(1, 2), keepdims=True)
        m = m / (1e-7 + m.max(axis=(1, 2), keepdims=True))
    return m


def theirs(net, cls, **kwargs):
    with cls(model=net, target_layers=[net.act], **kwargs) as cam:
        return cam(input_tensor=torch.from_numpy(X), targets=[ClassifierOutputTarget(t) for t in TARGETS])


PAIRS = [  # onnxsal method, pytorch-grad-cam class
    ("grad_cam", "GradCAM"),
    ("grad_cam_plus_plus", "GradCAMPlusPlus"),
    ("xgrad_cam", "XGradCAM"),
    ("layer_cam", "LayerCAM"),
    ("hires_cam", "HiResCAM"),
    ("grad_cam_elementwise", "GradCAMElementWise"),
    ("score_cam", "ScoreCAM"),
    ("ablation_cam", "AblationCAM"),
]


@pytest.mark.parametrize("ours,cls", PAIRS)
def test_cam_variant_equals_pytorch_grad_cam(models, ours, cls):
    net, ex = models
    want = theirs(net, getattr(pgc, cls))
    got = display(ex.explain(X, ours, target=TARGETS).maps.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("ours,cls,module", [("eigen_cam", "EigenCAM", "eigen_cam"),
                                             ("eigen_grad_cam", "EigenGradCAM", "eigen_grad_cam")])
def test_eigen_cams_equal_pytorch_grad_cam_up_to_the_components_sign(models, ours, cls, module, monkeypatch):
    # the first principal component is defined up to its sign: pytorch-grad-cam keeps LAPACK's, onnxsal fixes it
    # (methods/cam_more.py). Run pytorch-grad-cam as it is and with its projection negated; each image must equal
    # one of the two
    import importlib

    net, ex = models
    as_is = theirs(net, getattr(pgc, cls))
    mod = importlib.import_module(f"pytorch_grad_cam.{module}")
    project = mod.get_2d_projection
    monkeypatch.setattr(mod, "get_2d_projection", lambda a: -project(a))
    negated = theirs(net, getattr(pgc, cls))
    got = display(ex.explain(X, ours, target=TARGETS).maps.astype(np.float64))
    for s in range(len(X)):
        best = min(np.abs(got[s] - want[s]).max() for want in (as_is, negated))
        assert best < 2e-5, (ours, s, best)
