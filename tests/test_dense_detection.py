"""Beyond classifiers: decoders, box targets, RISE / D-RISE and the --region / --box command line.

Oracles: detections decoded by hand from arrays written in the test, torch autograd on a tiny
YOLOv8-style detector, and RISE / D-RISE written as plain loops over the same masks with torch computing
the scores (and the test's own IoU and decoding for D-RISE).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import onnxsal
from onnxsal.cli import main
from onnxsal.detection import BoxTarget, Decoder, Detection, detect, nms, pick
from onnxsal.errors import TargetError
from onnxsal.methods.rise import rise_masks
from onnxsal.preprocess import Preprocessing

RNG = np.random.default_rng(21)


def test_yolov8_and_yolov5_decoding_by_hand():
    # (4 + K, A) with K = 2, A = 3: anchor 0 class 1 at 0.9, anchor 1 overlaps it (suppressed), anchor 2 below threshold
    out = np.array([[50, 52, 10], [40, 41, 10], [20, 20, 4], [10, 10, 4],
                    [0.1, 0.2, 0.3], [0.9, 0.8, 0.1]], np.float32)
    dets = Decoder("yolov8", threshold=0.5, iou_threshold=0.45).decode({"scores": out}, (64, 64))
    assert len(dets) == 1
    d = dets[0]
    assert d.box == (40.0, 35.0, 60.0, 45.0) and d.label == 1 and d.score == pytest.approx(0.9) and d.index == (5, 0)
    # (A, 5 + K): score = objectness * class score
    out5 = np.array([[32, 32, 8, 8, 0.8, 0.1, 0.9], [10, 10, 4, 4, 0.4, 0.9, 0.1]], np.float32)
    dets = Decoder("yolov5", threshold=0.4).decode({"scores": out5}, (64, 64))
    assert [(d.label, round(d.score, 3), d.index, d.objectness_index) for d in dets] == [(1, 0.72, (0, 6), (0, 4))]
    assert dets[0].box == (28.0, 28.0, 36.0, 36.0)


def test_centernet_and_centerface_decoding_by_hand():
    heat = np.zeros((1, 8, 8), np.float32)
    heat[0, 2, 5] = 0.9
    heat[0, 2, 6] = 0.6  # next to the peak: not a local maximum
    size = np.zeros((2, 8, 8), np.float32)
    offset = np.zeros((2, 8, 8), np.float32)
    size[:, 2, 5] = (12.0, 6.0)  # centernet: (w, h) in input pixels
    offset[:, 2, 5] = (0.5, 0.25)  # centernet: (dx, dy) in cells
    (d,) = Decoder("centernet").decode({"scores": heat, "size": size, "offset": offset}, (32, 32))
    # stride 4: centre ((5 + 0.5) * 4, (2 + 0.25) * 4) = (22, 9)
    assert d.box == pytest.approx((16.0, 6.0, 28.0, 12.0)) and d.index == (0, 2, 5)
    size[:, 2, 5] = (np.log(3.0), np.log(2.0))  # centerface: log(h / 4), log(w / 4)
    offset[:, 2, 5] = (0.25, 0.5)  # centerface: (dy, dx); centre (x + dx + 0.5) * 4
    (d,) = Decoder("centerface").decode({"scores": heat, "size": size, "offset": offset}, (32, 32))
    cx, cy, w, h = (5 + 0.5 + 0.5) * 4, (2 + 0.25 + 0.5) * 4, 2 * 4, 3 * 4
    assert d.box == pytest.approx((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))


def test_nms_and_pick():
    a = Detection((0, 0, 10, 10), 0.9, 0, (0,))
    b = Detection((1, 1, 11, 11), 0.8, 0, (1,))  # IoU 81/119 = 0.68 with a
    c = Detection((1, 1, 11, 11), 0.7, 1, (2,))  # another class: kept
    assert nms([b, a, c], 0.5) == [a, c]
    assert pick([a, c], 1) is c
    assert pick([a, c], (0, 0, 9, 9)) is a
    with pytest.raises(TargetError, match="best IoU"):
        pick([a], (50, 50, 60, 60))
    with pytest.raises(TargetError, match="found nothing"):
        pick([], 0)


class TinyYolo(nn.Module):
    """conv backbone -> 1x1 heads for box centre, size and 2 classes per cell -> (N, 6, A), YOLOv8's layout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.xy, self.wh, self.cls = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 2, 1), nn.Conv2d(8, 2, 1)
        cells = torch.arange(64, dtype=torch.float32)  # an 8 x 8 grid of anchors for 16 x 16 inputs
        self.register_buffer("grid", torch.stack([cells % 8, torch.div(cells, 8, rounding_mode="floor")])[None])

    def forward(self, x):
        f = self.body(x)
        xy = (self.grid + torch.sigmoid(self.xy(f).reshape(-1, 2, 64))) * 2  # (N, 2, A) centres in input pixels
        wh = torch.exp(torch.tanh(self.wh(f).reshape(-1, 2, 64))) * 3
        return torch.cat([xy, wh, torch.sigmoid(self.cls(f).reshape(-1, 2, 64))], dim=1)


def _yolo_onnx():
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyYolo().eval(), (torch.randn(1, 3, 16, 16),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["out"], dynamic_axes={"x": {0: "b"}})
    return f.getvalue()


X = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)


def test_box_target_explains_the_detections_own_score():
    module = TinyYolo().eval()
    ex = onnxsal.Explainer(_yolo_onnx())
    found = detect(ex, X, Decoder("yolov8", threshold=0.0))
    chosen = [found[0][0], found[1][2]]
    out = module(torch.as_tensor(X)).detach().numpy()
    for i, det in enumerate(chosen):  # the decoded box is the model's own
        a = det.index[1]
        np.testing.assert_allclose(det.box, [out[i, 0, a] - out[i, 2, a] / 2, out[i, 1, a] - out[i, 3, a] / 2,
                                             out[i, 0, a] + out[i, 2, a] / 2, out[i, 1, a] + out[i, 3, a] / 2], rtol=1e-5)
    xt = torch.as_tensor(X).clone().requires_grad_(True)
    y = module(xt)
    sum(y[i, det.index[0], det.index[1]] for i, det in enumerate(chosen)).backward()
    res = ex.explain(X, "gradient_x_input", target=BoxTarget(chosen))
    np.testing.assert_allclose(res.scores, [out[i, det.index[0], det.index[1]] for i, det in enumerate(chosen)], rtol=1e-5)
    np.testing.assert_allclose(res.attributions, X * xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(res.targets, [d.label for d in chosen])


def test_rise_masks_follow_the_paper():
    masks = rise_masks(400, 21, 30, 7, 0.5, np.random.default_rng(0))
    assert masks.shape == (400, 21, 30) and masks.dtype == np.float32
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.5) < 0.03  # E[M] = p
    # bilinear upsampling of a 7-cell grid over cells of ceil(30 / 7) = 5 px: neighbours differ by at most 1 / 5
    assert np.abs(np.diff(masks, axis=2)).max() <= 1 / 5 + 1e-6


def test_rise_against_a_loop_over_the_same_masks():
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(7)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    module = Lin().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, 12, 12),), f, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}})
    ex = onnxsal.Explainer(f.getvalue())
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float32)
    res = ex.explain(x, "rise", target=2, masks=64, cells=4, p=0.5, seed=5, batch_size=16)
    rng = np.random.default_rng(5)
    masks = np.concatenate([rise_masks(16, 12, 12, 4, 0.5, rng) for _ in range(4)])
    want = np.zeros((12, 12))
    for m in masks:  # S = 1 / (N p) sum_i f(M_i x) M_i, fill 0
        want += module(torch.as_tensor(x * m[None, None]))[0, 2].item() * m
    np.testing.assert_allclose(res.maps[0], want / (64 * 0.5), rtol=1e-4, atol=1e-6)


def test_drise_against_a_loop_over_the_same_masks():
    module = TinyYolo().eval()
    ex = onnxsal.Explainer(_yolo_onnx())
    x = X[:1]
    target = detect(ex, x, Decoder("yolov8", threshold=0.0))[0][0]
    res = ex.explain(x, "drise", target=BoxTarget([target]), decoder="yolov8", masks=24, cells=4, seed=1, batch_size=8,
                     proposal_threshold=0.2)
    rng = np.random.default_rng(1)
    masks = np.concatenate([rise_masks(8, 16, 16, 4, 0.5, rng) for _ in range(3)])

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
        return ix * iy / u

    want = np.zeros((16, 16))
    for m in masks:
        out = module(torch.as_tensor(x * m[None, None])).detach().numpy()[0]
        best = 0.0
        for a in range(out.shape[1]):  # every proposal of the target's class above the threshold
            k = int(out[4:, a].argmax())
            score = float(out[4 + k, a])
            if k == target.label and score > 0.2:
                box = (out[0, a] - out[2, a] / 2, out[1, a] - out[3, a] / 2, out[0, a] + out[2, a] / 2, out[1, a] + out[3, a] / 2)
                best = max(best, iou(target.box, box) * score)
        want += best * m
    np.testing.assert_allclose(res.maps[0], want / 24, rtol=1e-4, atol=1e-6)


# -- the command line


class TinySeg(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.cls(self.body(x))


@pytest.fixture()
def files(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(RNG.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(photo)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinySeg().eval(), (torch.randn(1, 3, 16, 16),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["seg"], dynamic_axes={"x": {0: "b"}})
    (tmp_path / "seg.onnx").write_bytes(f.getvalue())
    (tmp_path / "yolo.onnx").write_bytes(_yolo_onnx())
    (tmp_path / "yolo.preprocess.json").write_text('{"size": 16, "crop": 1.0, "decoder": "yolov8"}')
    return tmp_path


def test_cli_region_box_explains_and_draws_it(files):
    runner = CliRunner()
    args = ["explain", str(files / "photo.png"), "--model", str(files / "seg.onnx"), "--size", "16", "--crop", "1",
            "--method", "gradient_x_input", "--target", "1", "--out", str(files / "out"), "--format", "both"]
    result = runner.invoke(main, args + ["--region", "10,10,30,30"])
    assert result.exit_code == 0, result.output
    assert "class 1 summed over a mask" in result.output
    # the photo's (10, 10)-(30, 30) is the model's (4, 4)-(12, 12): the same map as the Python API's RegionTarget
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 1
    ex = onnxsal.Explainer(str(files / "seg.onnx"), preprocessing=Preprocessing(size=16, crop=1.0))
    from onnxsal.preprocess import load_image

    x = ex.preprocessing.batch([load_image(files / "photo.png")])
    want = ex.explain(x, "gradient_x_input", target=onnxsal.RegionTarget(1, mask)).maps[0]
    np.testing.assert_allclose(np.load(files / "out" / "photo_gradient_x_input.npy"), want, rtol=1e-5, atol=1e-7)
    # the region's outline is drawn in cyan on the overlay (40 px picture: the model's pixel 4 starts at 10)
    picture = np.asarray(Image.open(files / "out" / "photo_gradient_x_input.png").convert("RGB"))
    assert tuple(picture[10, 20]) == (0, 255, 255) and tuple(picture[20, 20]) != (0, 255, 255)
    result = runner.invoke(main, args + ["--region", "predicted"])
    assert result.exit_code == 0 and "summed over its predicted pixels" in result.output


def test_cli_box_uses_the_sidecar_decoder_and_draws_the_box(files):
    runner = CliRunner()
    base = ["explain", str(files / "photo.png"), "--model", str(files / "yolo.onnx"), "--out", str(files / "o")]
    listing = runner.invoke(main, base + ["--box", "list", "--score-threshold", "0.3"])
    assert listing.exit_code == 0, listing.output
    assert "detection(s)" in listing.output and "  0: " in listing.output
    result = runner.invoke(main, base + ["--box", "0", "--score-threshold", "0.3", "--method", "grad_cam"])
    assert result.exit_code == 0, result.output
    assert "photo.png: box" in result.output and 'at output "out"' in result.output
    picture = np.asarray(Image.open(files / "o" / "photo_grad_cam.png").convert("RGB"))
    assert ((picture == (0, 255, 255)).all(axis=2)).sum() > 20  # the rectangle


@pytest.mark.parametrize("args,message", [
    (["--box", "0", "--model", "{seg}"], "--box needs the detector's layout"),
    (["--region", "predicted", "--model", "{yolo}"], "--region needs a dense output"),
    (["--region", "1,2,3", "--model", "{seg}"], "--region is predicted, x0,y0,x1,y1 or a mask image"),
    (["--box", "7", "--model", "{yolo}", "--score-threshold", "0.99"], "found nothing above the threshold"),
    (["--region", "predicted", "--box", "0", "--model", "{seg}"], "--region and --box explain different things"),
])
def test_cli_dense_errors_are_one_line(files, args, message):
    args = [a.format(seg=files / "seg.onnx", yolo=files / "yolo.onnx") for a in args]
    result = CliRunner().invoke(main, ["explain", str(files / "photo.png"), "--size", "16", *args, "--out", str(files / "e")])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("note:", "explaining "))]
    assert len(lines) == 1 and message in lines[0], result.output


def test_inspect_says_when_boxes_are_selected_in_the_graph(tmp_path):
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = RNG.standard_normal((5, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["s"]), helper.make_node("Reshape", ["s", "shape"], ["f"]),
             helper.make_node("TopK", ["f", "k"], ["top", "idx"], axis=2)]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 5, 16]),
                               helper.make_tensor_value_info("top", TensorProto.FLOAT, ["N", 5, 3])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([3], np.int64), "k"),
                               numpy_helper.from_array(np.array([0, 5, -1], np.int64), "shape")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "det.onnx")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "det.onnx"), "--json", "--output-name", "f"])
    assert result.exit_code == 0, result.output
    notes = json.loads(result.output[result.output.index("{"):])["notes"]
    assert any("selects boxes with TopK" in n and "--output-name" in n for n in notes), notes
