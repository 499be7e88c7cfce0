// EdgeModel: the browser side of edgepack's bridge, one API on every platform.
//
//   const model = await EdgeModel.load({ onProgress });          // reads ./edgepack.json
//   const { value, ok } = await model.run("my card got declined"); // contract: render, generate, parse
//   for streaming: await model.generate(prompt, { onToken: (t) => ... })
//
// Which runtime runs, and where, is decided here and reported in `model.info`, never guessed:
//   - WebLLM (MLC weights, WebGPU) when the bundle has it, its model library is bundled, and a
//     WebGPU adapter offers every feature the library needs (e.g. shader-f16 for q4f16_1);
//   - otherwise wllama (GGUF, llama.cpp in WebAssembly) on the CPU, with WebGPU offload only when
//     asked for (gpu: "on") or when gpu: "auto" finds an adapter with shader-f16.

import { contractFromOrdered, labelsGrammar, parseOutput, pyJsonLoads, renderPrompt } from "./contract.js";
import { fetchVerified } from "./model-store.js";

export { parseOutput, renderPrompt } from "./contract.js";
export { clearModelCache } from "./model-store.js";

/** Threads for a WASM runtime: half the cores (at most 4) when cross-origin isolated, else 1. */
export function chooseThreads(hardwareConcurrency, crossOriginIsolated) {
  if (!crossOriginIsolated) return 1; // no SharedArrayBuffer, no threads
  return Math.max(1, Math.min(4, Math.floor((hardwareConcurrency || 1) / 2)));
}

/** Return {available, features, reason} for WebGPU in this browser. */
export async function probeWebGPU() {
  if (!globalThis.navigator?.gpu) {
    return { available: false, features: [], reason: "navigator.gpu is missing (no WebGPU in this browser)" };
  }
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { available: false, features: [], reason: "requestAdapter() returned no adapter" };
    return { available: true, features: [...adapter.features].sort(), reason: "" };
  } catch (err) {
    return { available: false, features: [], reason: `requestAdapter() failed: ${err}` };
  }
}

/** Why one WebLLM variant cannot run here, or "" when it can. */
function webllmVariantProblem(variant, webgpu) {
  if (!variant.model_lib) return `${variant.model_id}: model library not bundled (${variant.model_lib_status})`;
  if (!webgpu.available) return `${variant.model_id}: ${webgpu.reason}`;
  const missing = (variant.required_features ?? []).filter((f) => !webgpu.features.includes(f));
  return missing.length ? `${variant.model_id}: the WebGPU adapter lacks ${missing.join(", ")}` : "";
}

/** Pick the runtime for this browser; returns {runtime, gpu, reason, variant}. Pure, so it can be tested. */
export function chooseRuntime(manifest, webgpu, { runtime = "auto", gpu = "auto" } = {}) {
  const runtimes = manifest.runtimes ?? {};
  const variants = runtimes.webllm?.variants ?? [];
  const problems = variants.map((v) => webllmVariantProblem(v, webgpu));
  const usable = variants.find((v, i) => problems[i] === "");
  const webllmWhyNot = variants.length ? problems.join("; ") : "the bundle has no WebLLM build";
  if (runtime === "webllm" || (runtime === "auto" && usable)) {
    if (!usable) throw new Error(`WebLLM cannot run here: ${webllmWhyNot}`);
    return { runtime: "webllm", gpu: true, variant: usable, reason: `WebGPU adapter offers what ${usable.model_id} needs` };
  }
  if (!runtimes.wllama) {
    throw new Error(`no runtime of this bundle can run here: WebLLM: ${webllmWhyNot}; the bundle has no wllama build`);
  }
  const gpuWanted = gpu === "on" || (gpu === "auto" && webgpu.available && webgpu.features.includes("shader-f16"));
  const reason = runtime === "wllama" ? "wllama requested" : `WebLLM unavailable (${webllmWhyNot})`;
  return { runtime: "wllama", gpu: gpuWanted, variant: null, reason };
}

export class EdgeModel {
  constructor(manifest, contract, session, info) {
    this.manifest = manifest;
    this.contract = contract;
    this.session = session;
    this.info = info;
  }

  /**
   * Load the bundle's model. Options: baseUrl (folder of edgepack.json, default the page's folder),
   * runtime ("auto" | "wllama" | "webllm"), gpu ("auto" | "on" | "off"), threads, useCache,
   * onProgress({phase, loaded, total, fraction}), signal.
   */
  static async load(options = {}) {
    const started = performance.now();
    const baseUrl = new URL(options.baseUrl ?? "./", globalThis.document?.baseURI ?? globalThis.location?.href);
    const manifestResponse = await fetch(new URL("edgepack.json", baseUrl), { cache: "no-cache" });
    if (!manifestResponse.ok) throw new Error(`edgepack.json: HTTP ${manifestResponse.status}`);
    const manifestText = await manifestResponse.text();
    const manifest = JSON.parse(manifestText);
    // The contract is read with Python's JSON rules, so schema key order matches packager/contract.py.
    const contract = contractFromOrdered(pyJsonLoads(manifestText).get("contract"));
    const webgpu = await probeWebGPU();
    const choice = chooseRuntime(manifest, webgpu, options);
    const isolated = Boolean(globalThis.crossOriginIsolated);
    const threads = options.threads ?? chooseThreads(globalThis.navigator?.hardwareConcurrency, isolated);
    const contextLength = manifest.model.context_length;
    const entry = manifest.runtimes[choice.runtime];
    let session;
    let fromCache = null;
    if (choice.runtime === "wllama") {
      const files = await fetchModelFiles(manifest, entry.model_files, baseUrl, options);
      fromCache = files.every((f) => f.fromCache);
      const named = files.map((f) => new File([f.blob], f.name, { type: "application/octet-stream" }));
      options.onProgress?.({ phase: "init", fraction: 1 });
      const { loadWllama } = await import("./runtimes/wllama.js");
      session = await loadWllama({
        moduleUrl: new URL(entry.module, baseUrl).href,
        wasmUrl: new URL(entry.wasm, baseUrl).href,
        files: named,
        threads,
        gpu: choice.gpu,
        contextLength,
        fullWindowCache: entry.full_window_cache === true,
      });
    } else {
      const { loadWebLLM } = await import("./runtimes/webllm.js");
      session = await loadWebLLM({
        moduleUrl: new URL(entry.module, baseUrl).href,
        entry: choice.variant,
        baseUrl,
        contextLength: entry.context_window_size,
        onProgress: options.onProgress,
      });
    }
    const info = {
      runtime: choice.runtime,
      runtimeVersion: entry.version,
      model: choice.runtime === "webllm" ? choice.variant.model_id : entry.model_files.join(", "),
      llamaCppVersion: session.llamaCppVersion,
      backend: choice.runtime === "webllm" ? "webgpu" : choice.gpu ? "webgpu (requested from wllama)" : "wasm-cpu",
      reason: choice.reason,
      threads: session.threads ?? threads,
      multithread: session.multithread,
      // Whether run() applies a constrained contract's grammar here.
      constrained: Boolean(contract.constrained && session.supportsGrammar),
      crossOriginIsolated: isolated,
      hardwareConcurrency: globalThis.navigator?.hardwareConcurrency ?? null,
      webgpu,
      fromCache,
      loadMs: performance.now() - started,
    };
    return new EdgeModel(manifest, contract, session, info);
  }

  /** The exact prompt text for an input, rendered as the task contract says. */
  renderPrompt(input, instruction = "") {
    return renderPrompt(this.contract, input, instruction);
  }

  /**
   * Generate from a raw prompt. Options: maxTokens (default: the contract's max_new_tokens),
   * temperature, topK, topP (defaults: the contract's generation settings, else greedy), stop,
   * ignoreEos, tokenIds (collect token ids; slower), onToken(textPiece), signal.
   */
  async generate(prompt, options = {}) {
    const gen = this.contract.generation ?? {};
    const greedy = gen.do_sample !== true; // as in transformers: sampling only when asked for
    const started = performance.now();
    const result = await this.session.generate(prompt, {
      maxTokens: options.maxTokens ?? this.contract.max_new_tokens,
      temperature: options.temperature ?? (greedy ? 0 : gen.temperature),
      topK: options.topK ?? (greedy ? 1 : gen.top_k),
      topP: options.topP ?? gen.top_p,
      stop: options.stop,
      ignoreEos: options.ignoreEos,
      tokenIds: options.tokenIds ?? false,
      grammar: options.grammar,
      onToken: options.onToken,
      signal: options.signal,
    });
    return { ...result, prompt, wallMs: performance.now() - started };
  }

  /**
   * Render the contract prompt for input, generate, and parse: {ok, value, error, text, raw}.
   * A constrained labels contract decodes under its GBNF grammar on wllama (llama.cpp); WebLLM
   * decodes unconstrained (model.info.constrained says which happened).
   */
  async run(input, options = {}) {
    const prompt = this.renderPrompt(input, options.instruction ?? "");
    const result = await this.generate(prompt, {
      stop: this.contract.stop_strings,
      grammar: this.grammarFor(),
      ...options,
    });
    return { ...parseOutput(this.contract, result.text), raw: result.text, generation: result };
  }

  /** The contract's grammar when it asks for constrained decoding and this runtime can apply it. */
  grammarFor() {
    const c = this.contract;
    if (!c.constrained || c.task !== "labels" || !c.labels?.length) return undefined;
    return this.session.supportsGrammar ? labelsGrammar(c.labels) : undefined;
  }

  async release() {
    await this.session.release();
  }
}

async function fetchModelFiles(manifest, paths, baseUrl, options) {
  const byPath = new Map(manifest.files.map((f) => [f.path, f]));
  const total = paths.reduce((sum, p) => sum + byPath.get(p).bytes, 0);
  const loaded = new Map();
  const report = () => {
    const sum = [...loaded.values()].reduce((a, b) => a + b, 0);
    options.onProgress?.({ phase: "download", loaded: sum, total, fraction: total ? sum / total : 1 });
  };
  return Promise.all(
    paths.map(async (path) => {
      const entry = byPath.get(path);
      if (!entry) throw new Error(`edgepack.json lists ${path} as a model file but has no hash for it`);
      const { blob, fromCache } = await fetchVerified(new URL(path, baseUrl).href, entry, {
        useCache: options.useCache ?? true,
        signal: options.signal,
        onProgress: (n) => {
          loaded.set(path, n);
          report();
        },
      });
      return { blob, fromCache, name: path.split("/").pop() };
    }),
  );
}
