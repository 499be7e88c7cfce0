// wllama (llama.cpp compiled to WebAssembly) behind the EdgeModel runtime interface.
//
// wllama 3.x can also offload to WebGPU (llama.cpp's ggml-webgpu); EdgeModel decides, and this
// module only does what it is told: gpu=false passes n_gpu_layers=0, which keeps WebGPU off.

const QUIET_LOGGER = {
  debug: () => {},
  log: () => {},
  warn: (...args) => console.warn(...args),
  error: (...args) => console.error(...args),
};

/** Load the GGUF part files (Blobs, in order) and return a runtime session. */
export async function loadWllama({ moduleUrl, wasmUrl, files, threads, gpu, contextLength, fullWindowCache }) {
  const { Wllama, LogLevel } = await import(moduleUrl);
  // Native errors stay on: when llama.cpp's action fails inside the WASM, wllama 3.8.1 only throws
  // "RangeError: Invalid typed array length: 1163217991" (the request's "GLUE" magic read as the
  // reply's length), and the native line is the one that says why, e.g. "[json.exception.type_error.316]
  // invalid UTF-8 byte" when the model's output is not valid UTF-8 (its result JSON is strict).
  const wllama = new Wllama({ default: wasmUrl }, { logger: QUIET_LOGGER, suppressNativeLog: false });
  // Never fetch wllama's Safari/Firefox compatibility build from its CDN: a bundle runs offline.
  wllama.setCompat(null);
  await wllama.loadModel(files, {
    n_ctx: contextLength,
    n_threads: threads,
    n_gpu_layers: gpu ? 999999 : 0,
    // llama-server (inside wllama) turns flash attention on by default; the GGUF was verified
    // against the fp32 model without it, and on Gemma 3 270M it moved logits by up to ~0.3 and
    // changed greedy tokens. Run the computation that was verified.
    flash_attn: false,
    // Gemma 3 and other sliding-window models: llama-server keeps only the window of their local
    // layers and then re-evaluates the WHOLE prompt of every request, the task's shared instruction
    // included (measured: 25 of 25 prompt tokens per eval row). A full-size window cache lets
    // cache_prompt reuse the shared prefix (11 of 24 tokens evaluated; a labels answer 1.6 s -> 1.1 s
    // on one WASM thread). The build turns it on where it costs little memory (edgepack.json's
    // runtimes.wllama.full_window_cache; packager/window_cache.py).
    swa_full: fullWindowCache,
    log_level: LogLevel.ERROR,
  });
  return new WllamaSession(wllama, Wllama.getLibllamaVersion());
}

class WllamaSession {
  constructor(wllama, llamaCppVersion) {
    this.wllama = wllama;
    this.llamaCppVersion = llamaCppVersion;
    this.threads = wllama.getNumThreads();
    this.multithread = wllama.isMultithread();
    this.supportsGrammar = true; // llama-server's GBNF sampler
  }

  /**
   * Stream a completion of `prompt`; returns {text, tokenIds, promptTokens, promptTokensEvaluated,
   * finishReason, decodeTokensPerS, prefillTokensPerS}.
   *
   * tokenIds are collected only when asked (they come from llama-server's n_probs, which costs a
   * softmax over the vocabulary per token, so speed runs leave it off).
   */
  async generate(prompt, options) {
    const pieces = [];
    const tokenIds = [];
    let usage = null;
    let timings = null;
    let finishReason = null;
    await this.wllama.createCompletion({
      prompt,
      max_tokens: options.maxTokens,
      temperature: options.temperature,
      top_k: options.topK,
      top_p: options.topP,
      stop: options.stop,
      ignore_eos: options.ignoreEos ?? false,
      // Reuse the KV cache of the prompt prefix the previous request shares (a task's instruction and
      // template): llama-server evaluates only the new tokens, as llama-cpp-python does natively.
      cache_prompt: true,
      stream: true,
      abortSignal: options.signal,
      ...(options.tokenIds ? { logprobs: 1 } : {}),
      ...(options.grammar ? { grammar: options.grammar } : {}), // llama-server's GBNF field
      onData: (chunk) => {
        const choice = chunk.choices?.[0];
        if (choice?.text) {
          pieces.push(choice.text);
          options.onToken?.(choice.text);
        }
        for (const item of choice?.logprobs?.content ?? []) {
          tokenIds.push(item.id);
        }
        if (choice?.finish_reason) finishReason = choice.finish_reason;
        if (chunk.usage) usage = chunk.usage;
        if (chunk.timings) timings = chunk.timings;
      },
    });
    return {
      text: pieces.join(""),
      tokenIds: options.tokenIds ? tokenIds : null,
      promptTokens: usage?.prompt_tokens ?? null,
      completionTokens: usage?.completion_tokens ?? null,
      finishReason,
      decodeTokensPerS: timings?.predicted_per_second ?? null,
      prefillTokensPerS: timings?.prompt_per_second ?? null,
      // Prompt tokens this request evaluated: fewer than promptTokens when a cached prefix was reused.
      promptTokensEvaluated: timings?.prompt_n ?? null,
    };
  }

  async release() {
    await this.wllama.exit();
  }
}
