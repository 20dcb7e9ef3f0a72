// Runs an onnxsal explanation model (onnxsal export MODEL --method grad_cam --overlay -o explain.onnx) with
// onnxruntime-web's wasm back end. Page parameters (all optional):
//   model=explain.onnx        the exported graph (inputs image, class; outputs scores, target, heatmap, overlay)
//   prep=explain.prep.json    {size, crop, mean, std, scale}: how a picked image becomes the input tensor
//   labels=labels.txt         one class name a line
//   input=x.f32               a preprocessed NCHW float32 tensor to explain at once (what the tests use)
// When done, #status reads "done" and #heatmap holds the heatmap as base64 float32 (N x H x W).
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", location.href).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page

let session, prep, labels = [];

async function fetchOk(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r;
}

// The picked photo -> NCHW float32, as the Python preprocessing does it: resize the short side so that the
// centre crop keeps `crop` of it, crop size x size, x = (pixel * scale - mean) / std. The browser's resampling
// has no antialiasing like PIL's, so this tensor differs a little from the Python one.
function preprocess(img) {
  const size = prep.size, side = Math.min(img.width, img.height) * prep.crop;
  const canvas = $("photo"), ctx = canvas.getContext("2d");
  ctx.drawImage(img, (img.width - side) / 2, (img.height - side) / 2, side, side, 0, 0, size, size);
  const rgba = ctx.getImageData(0, 0, size, size).data, plane = size * size;
  const x = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++)
    for (let c = 0; c < 3; c++) x[c * plane + i] = (rgba[4 * i + c] * prep.scale - prep.mean[c]) / prep.std[c];
  return new ort.Tensor("float32", x, [1, 3, size, size]);
}

function showPhoto(tensor) {  // the input mapped back to pixels, for the left canvas
  const [, , h, w] = tensor.dims, plane = h * w, x = tensor.data;
  const image = new ImageData(w, h);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) image.data[4 * i + c] = Math.round((x[c * plane + i] * prep.std[c] + prep.mean[c]) / prep.scale);
    image.data[4 * i + 3] = 255;
  }
  $("photo").getContext("2d").putImageData(image, 0, 0);
}

async function explain(tensor) {
  $("status").textContent = "running…";
  const t0 = performance.now();
  const out = await session.run({ image: tensor, class: new ort.Tensor("int64", BigInt64Array.from([-1n]), [1]) });
  const ms = performance.now() - t0;
  const [, h, w] = out.heatmap.dims;
  const canvas = $("overlay"), image = new ImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    if (out.overlay) for (let c = 0; c < 3; c++) image.data[4 * i + c] = out.overlay.data[3 * i + c];
    else image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = Math.round(255 * Math.abs(out.heatmap.data[i]));
    image.data[4 * i + 3] = 255;
  }
  canvas.width = w; canvas.height = h;
  canvas.getContext("2d").putImageData(image, 0, 0);
  // top 5 by softmax of the first sample's scores
  const k = out.scores.dims[1], s = Array.from(out.scores.data.slice(0, k));
  const m = Math.max(...s), e = s.map((v) => Math.exp(v - m)), z = e.reduce((a, b) => a + b, 0);
  const order = e.map((v, i) => [v / z, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  $("top").innerHTML = order.map(([p, i]) => `<li>${labels[i] ?? i} (${(100 * p).toFixed(1)}%)</li>`).join("");
  $("method").textContent = `heatmap of class ${labels[Number(out.target.data[0])] ?? out.target.data[0]}`;
  const bytes = new Uint8Array(out.heatmap.data.buffer, out.heatmap.data.byteOffset, out.heatmap.data.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  $("heatmap").textContent = btoa(text);
  $("status").textContent = `done (${ms.toFixed(0)} ms)`;
  $("status").dataset.target = String(out.target.data[0]);
}

async function main() {
  try {
    const model = params.get("model") || "explain.onnx";
    prep = await (await fetchOk(params.get("prep") || "explain.prep.json")).json();
    if (params.get("labels")) labels = (await (await fetchOk(params.get("labels"))).text()).split("\n");
    session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
    $("status").textContent = "pick an image";
    $("file").addEventListener("change", () => {
      const file = $("file").files[0];
      if (!file) return;
      const img = new Image();
      img.onload = () => explain(preprocess(img)).catch((e) => { $("status").textContent = `error: ${e.message}`; });
      img.src = URL.createObjectURL(file);
    });
    if (params.get("input")) {
      const data = new Float32Array(await (await fetchOk(params.get("input"))).arrayBuffer());
      const tensor = new ort.Tensor("float32", data, [1, 3, prep.size, prep.size]);
      showPhoto(tensor);
      await explain(tensor);
    }
  } catch (e) {
    $("status").textContent = `error: ${e.message}`;
  }
}

main();
