"""onnxsal.ray on a local Ray instance: the same results as the single-process run, and a killed actor retried.

Needs Ray Data (the optional extra `onnxsal[ray]`, about 250 MB with pyarrow); skipped without it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install 'onnxsal[ray]'): Ray tests skipped")

import onnxsal  # noqa: E402
from onnxsal.preprocess import load_image  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for i in range(12):
        path = tmp_path / f"p{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_ray_results_equal_the_single_process_run(cluster, photos):
    import onnxsal.ray as osr

    targets = [281, 7, 954] * 4
    ds = ray.data.from_items([{"path": p, "target": t} for p, t in zip(photos, targets)])
    rows = sorted(osr.explain_dataset(ds, model="mobilenet_v2", method="grad_cam", batch_size=4, actors=2,
                                      map_dtype="float32").take_all(), key=lambda r: r["path"])
    ex = onnxsal.Explainer("mobilenet_v2")
    x = ex.preprocessing.batch([load_image(p) for p in photos])
    want = ex.explain(x, "grad_cam", target=targets)
    assert [r["path"] for r in rows] == photos
    for i, row in enumerate(rows):
        assert row["class"] == targets[i] and row["method"] == "grad_cam"
        assert row["score"] == pytest.approx(float(want.scores[i]), rel=1e-5)
        np.testing.assert_allclose(row["map"], want.maps[i], rtol=1e-5, atol=1e-7)


def test_a_killed_actor_is_retried_and_nothing_is_lost_or_doubled(cluster, photos, tmp_path):
    import onnxsal.ray as osr

    marker = tmp_path / "killed"

    class Dying(osr._Actor):
        def __call__(self, batch):
            if not marker.exists():  # the first batch of the first actor kills its process once
                marker.write_text("x")
                import os

                os._exit(1)
            return super().__call__(batch)

    original = osr._Actor
    osr._Actor = Dying
    try:
        ds = ray.data.from_items([{"path": p} for p in photos])
        rows = osr.explain_dataset(ds, model="mobilenet_v2", method="saliency", batch_size=3, actors=1).take_all()
    finally:
        osr._Actor = original
    assert marker.exists()
    assert sorted(r["path"] for r in rows) == photos  # every image once
