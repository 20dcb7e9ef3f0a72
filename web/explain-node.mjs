// Runs an onnxsal explanation model (onnxsal export MODEL --method ... -o explain.onnx) in onnxruntime-node.
//   node explain-node.mjs explain.onnx input.f32 N,C,H,W out-prefix [class ...]
// input.f32: the preprocessed image batch as raw little-endian float32; classes: one per sample or one for all
// (-1 = top, the default). Writes <out-prefix>.heatmap.f32
// (raw float32, N x H x W) and <out-prefix>.json ({ target, scores shape, heatmap shape }).
import { readFileSync, writeFileSync } from "node:fs";
import * as ort from "onnxruntime-node";

const [modelPath, inputPath, shapeText, outPrefix, ...classes] = process.argv.slice(2);
const shape = shapeText.split(",").map(Number);
const bytes = readFileSync(inputPath);
const pixels = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);

const session = await ort.InferenceSession.create(modelPath, { executionProviders: ["cpu"] });
const feeds = { image: new ort.Tensor("float32", pixels, shape) };
if (session.inputNames.includes("class")) {
  const chosen = classes.length ? classes : ["-1"];
  feeds["class"] = new ort.Tensor("int64", BigInt64Array.from(chosen.map(BigInt)), [chosen.length]);
}
const out = await session.run(feeds);
const heat = out.heatmap;
writeFileSync(`${outPrefix}.heatmap.f32`, Buffer.from(heat.data.buffer, heat.data.byteOffset, heat.data.byteLength));
writeFileSync(`${outPrefix}.json`, JSON.stringify({
  inputs: session.inputNames,
  target: Array.from(out.target.data, Number),
  scores: Array.from(out.scores.data),
  scoresShape: out.scores.dims,
  heatmapShape: heat.dims,
}));
