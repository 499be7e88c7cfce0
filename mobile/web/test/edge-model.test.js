// Runtime and thread choice of EdgeModel (pure functions; the browser path is tested in Chromium
// by tests/test_web.py).
import assert from "node:assert/strict";
import { test } from "node:test";

import { EdgeModel, chooseRuntime, chooseThreads } from "../edge-model.js";

const NO_GPU = { available: false, features: [], reason: "navigator.gpu is missing" };
const GPU_F32 = { available: true, features: ["timestamp-query"], reason: "" };
const GPU_F16 = { available: true, features: ["shader-f16", "timestamp-query"], reason: "" };
const variant = (quantization, features, lib) => ({
  model_id: `m-${quantization}-MLC`, quantization, required_features: features,
  model_lib: lib ? `webllm/libs/${quantization}.wasm` : null, model_lib_status: lib ? "bundled" : "needs-compile",
});
const BOTH = {
  runtimes: {
    wllama: { model_files: ["model/model-Q4_K_M.gguf"] },
    webllm: { variants: [variant("q4f16_1", ["shader-f16"], true), variant("q4f32_1", [], true)] },
  },
};

test("threads: half the cores, at most 4, only when cross-origin isolated", () => {
  assert.equal(chooseThreads(2, true), 1);
  assert.equal(chooseThreads(8, true), 4);
  assert.equal(chooseThreads(32, true), 4);
  assert.equal(chooseThreads(16, false), 1);
  assert.equal(chooseThreads(undefined, true), 1);
});

test("without WebGPU the wllama build runs on the CPU and says why", () => {
  const choice = chooseRuntime(BOTH, NO_GPU);
  assert.equal(choice.runtime, "wllama");
  assert.equal(choice.gpu, false);
  assert.match(choice.reason, /navigator\.gpu is missing/);
});

test("WebLLM takes the first variant whose features the adapter has", () => {
  assert.equal(chooseRuntime(BOTH, GPU_F16).variant.quantization, "q4f16_1");
  assert.equal(chooseRuntime(BOTH, GPU_F32).variant.quantization, "q4f32_1");
});

test("a WebLLM build without its model library is never chosen", () => {
  const noLib = { runtimes: { ...BOTH.runtimes, webllm: { variants: [variant("q4f16_1", ["shader-f16"], false)] } } };
  const choice = chooseRuntime(noLib, GPU_F16);
  assert.equal(choice.runtime, "wllama");
  assert.match(choice.reason, /model library not bundled \(needs-compile\)/);
  assert.throws(() => chooseRuntime(noLib, GPU_F16, { runtime: "webllm" }), /WebLLM cannot run here/);
});

test("wllama offloads to WebGPU only when asked, or on auto with shader-f16", () => {
  const wllamaOnly = { runtimes: { wllama: BOTH.runtimes.wllama } };
  assert.equal(chooseRuntime(wllamaOnly, GPU_F32).gpu, false);
  assert.equal(chooseRuntime(wllamaOnly, GPU_F16).gpu, true);
  assert.equal(chooseRuntime(wllamaOnly, GPU_F16, { gpu: "off" }).gpu, false);
  assert.equal(chooseRuntime(wllamaOnly, NO_GPU, { gpu: "on" }).gpu, true);
});

test("a bundle with nothing that can run here is an error naming both reasons", () => {
  const webllmOnly = { runtimes: { webllm: BOTH.runtimes.webllm } };
  assert.throws(() => chooseRuntime(webllmOnly, NO_GPU), /WebLLM: .*no wllama build/);
});

// run(): the contract's grammar reaches a runtime that can apply it, and only then.
const LABELS = {
  task: "labels", labels: ["track_order", "say \"hi\""], constrained: true, stop_strings: ["\n"], max_new_tokens: 8,
  prompt: { template: "{input}\nIntent:", chat: false, system: null }, add_bos: true,
};
const fakeSession = (supportsGrammar, text) => ({
  supportsGrammar,
  seen: null,
  async generate(prompt, options) {
    this.seen = { prompt, ...options };
    return { text, tokenIds: null };
  },
});

test("a constrained labels contract decodes under its GBNF grammar where the runtime supports it", async () => {
  const session = fakeSession(true, " track_order");
  const result = await new EdgeModel({}, LABELS, session, {}).run("where is it");
  assert.equal(session.seen.grammar, 'root ::= " "? ("track_order" | "say \\"hi\\"")\n');
  assert.deepEqual(session.seen.stop, ["\n"]);
  assert.equal(result.ok, true);
  assert.equal(result.value, "track_order");
});

test("no grammar for an unconstrained contract, or on a runtime without grammar support", async () => {
  const free = fakeSession(true, " nope");
  const parsed = await new EdgeModel({}, { ...LABELS, constrained: false }, free, {}).run("x");
  assert.equal(free.seen.grammar, undefined);
  assert.equal(parsed.ok, false); // an answer outside the labels is reported, never repaired
  const webllm = fakeSession(false, " track_order");
  await new EdgeModel({}, LABELS, webllm, {}).run("x");
  assert.equal(webllm.seen.grammar, undefined);
});
