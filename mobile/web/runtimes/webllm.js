// WebLLM (MLC, WebGPU) behind the EdgeModel runtime interface.
//
// WebLLM fetches and caches its own files from `<model_url>/resolve/main/`; the integrity it can
// check (SRI for mlc-chat-config.json, the model library and tokenizer files) is passed from
// edgepack.json. Weight shards are not hashed by this bridge: WebLLM reads them as they come.

/** Load the MLC model described by the web-llm entry of edgepack.json; return a runtime session. */
export async function loadWebLLM({ moduleUrl, entry, baseUrl, contextLength, onProgress }) {
  const webllm = await import(moduleUrl);
  const record = {
    model: new URL(entry.model_url, baseUrl).href,
    model_id: entry.model_id,
    model_lib: new URL(entry.model_lib, baseUrl).href,
    required_features: entry.required_features,
    overrides: { context_window_size: contextLength },
    integrity: entry.integrity,
  };
  const engine = await webllm.CreateMLCEngine(entry.model_id, {
    appConfig: { model_list: [record], cacheBackend: "cache" },
    initProgressCallback: (report) => onProgress?.({ phase: "load", fraction: report.progress, text: report.text }),
  });
  return new WebLLMSession(engine);
}

class WebLLMSession {
  constructor(engine) {
    this.engine = engine;
    this.llamaCppVersion = null;
    this.threads = null;
    this.multithread = false;
    this.supportsGrammar = false; // edgepack does not pass grammars to WebLLM (yet): unconstrained
  }

  async generate(prompt, options) {
    const pieces = [];
    const tokenIds = [];
    let usage = null;
    let finishReason = null;
    const stream = await this.engine.completions.create({
      prompt,
      max_tokens: options.maxTokens,
      temperature: options.temperature,
      top_p: options.topP,
      stop: options.stop,
      ignore_eos: options.ignoreEos ?? false,
      stream: true,
      stream_options: { include_usage: true },
      ...(options.tokenIds ? { logprobs: true, top_logprobs: 1 } : {}),
    });
    for await (const chunk of stream) {
      const choice = chunk.choices?.[0];
      if (choice?.text) {
        pieces.push(choice.text);
        options.onToken?.(choice.text);
      }
      for (const item of choice?.logprobs?.content ?? []) {
        if (item.id !== undefined) tokenIds.push(item.id);
      }
      if (choice?.finish_reason) finishReason = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    return {
      text: pieces.join(""),
      tokenIds: options.tokenIds && tokenIds.length ? tokenIds : null,
      promptTokens: usage?.prompt_tokens ?? null,
      completionTokens: usage?.completion_tokens ?? null,
      finishReason,
      decodeTokensPerS: usage?.extra?.decode_tokens_per_s ?? null,
      prefillTokensPerS: usage?.extra?.prefill_tokens_per_s ?? null,
      promptTokensEvaluated: null, // WebLLM does not say whether it reused a cached prefix
    };
  }

  async release() {
    await this.engine.unload();
  }
}
