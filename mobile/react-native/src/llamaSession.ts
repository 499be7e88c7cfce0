/**
 * LlamaSession: one GGUF loaded by llama.rn, driven exactly as a task contract says. EdgeModel runs
 * it under the model's contract; EdgeFleet under the contract of the specialist whose LoRA adapter
 * it has applied.
 *
 * llama.rn runs the GGUF; this class only decides what to send it. The prompt is rendered by the
 * contract (renderPrompt), generation stops on the contract's stop strings and on the model's
 * end-of-generation tokens, and the answer is parsed by the contract (parseOutput), with no repair.
 *
 * BOS: llama.rn has no per-request BOS option. It tokenizes a raw prompt with
 * llama_vocab_get_add_bos(), i.e. the GGUF's `tokenizer.ggml.add_bos_token`; edgepack checks at
 * build time that this flag equals the contract's add_bos, and open() checks it again from the
 * metadata llama.rn reports.
 */

import { initLlama, type CompletionParams, type ContextParams, type LlamaContext, type TokenData } from 'llama.rn';

import { labelsGrammar, parseOutput, renderPrompt, type Contract, type JsonObject, type ParseResult } from './contract';
import { EdgeModelError } from './errors';
import type { ModelFileSystem } from './fileSystem';
import type { EdgepackManifest } from './manifest';
import type { LoadProgress, ModelFileOptions } from './modelFile';

/** What loading needs besides where the files come from (EdgeModel's and EdgeFleet's load options). */
export interface SessionOptions extends ModelFileOptions {
  /** edgepack.json as shipped with the app (e.g. `require('./edgepack.json')`). */
  manifest: unknown;
  /** File system and network (see fileSystem.ts); on a phone, createBlobUtilFileSystem(). */
  fileSystem: ModelFileSystem;
  /** Extra llama.rn context parameters (threads, GPU layers, ...); n_ctx defaults to the build's. */
  contextParams?: Partial<Omit<ContextParams, 'model'>>;
}

export interface Sampling {
  temperature: number;
  top_k: number;
  top_p: number;
  min_p: number;
  seed: number;
}

export interface GenerateOptions {
  /** Called for every streamed piece with the piece and all text so far. */
  onToken?: (token: string, text: string) => void;
  signal?: AbortSignal;
  /** Default: contract.max_new_tokens. */
  maxTokens?: number;
  /** Default: contract.stop_strings. */
  stop?: string[];
  grammar?: string;
  jsonSchema?: JsonObject;
  sampling?: Partial<Sampling>;
}

export type RunOptions = Omit<GenerateOptions, 'grammar' | 'jsonSchema'>;

export type StopReason = 'eos' | 'stop_string' | 'max_tokens' | 'context_full' | 'cancelled' | 'unknown';

export interface GenerateResult {
  /** What the model produced, without the stop string that ended it. */
  text: string;
  stoppedBy: StopReason;
  tokensPredicted: number;
  tokensEvaluated: number;
  /** Wall time from the request to the last token, measured on the phone. */
  latencyMs: number;
  /** Wall time to the first streamed token, or null when nothing was streamed. */
  firstTokenMs: number | null;
  tokensPerSecond: number | null;
}

export interface RunResult extends ParseResult {
  prompt: string;
  generation: GenerateResult;
}

/** Return the sampling settings the checkpoint's generation_config means, in llama.cpp terms. */
export function samplingFromContract(contract: Contract): Sampling {
  const generation = contract.generation;
  const num = (key: string, fallback: number): number => {
    const value = generation[key];
    return typeof value === 'number' ? value : fallback;
  };
  if (generation.do_sample === true) {
    // transformers' defaults for the keys generation_config.json leaves out; no min_p in HF.
    return {
      temperature: num('temperature', 1.0), top_k: num('top_k', 50), top_p: num('top_p', 1.0), min_p: 0, seed: -1,
    };
  }
  // transformers decodes greedily unless do_sample is true; llama.cpp does so for temperature <= 0.
  return { temperature: 0, top_k: 1, top_p: 1.0, min_p: 0, seed: -1 };
}

/** Return the llama.rn completion parameters for a raw prompt under the contract. */
export function completionParams(contract: Contract, prompt: string, options: GenerateOptions = {}): CompletionParams {
  // Every sampling key is sent on every call: llama.rn keeps a key's previous value when it is absent.
  const sampling: Sampling = { ...samplingFromContract(contract) };
  for (const [key, value] of Object.entries(options.sampling ?? {})) {
    if (value !== undefined) sampling[key as keyof Sampling] = value;
  }
  const params: CompletionParams = {
    prompt,
    n_predict: options.maxTokens ?? contract.max_new_tokens,
    stop: [...(options.stop ?? contract.stop_strings)],
    ...sampling,
  };
  if (options.grammar !== undefined) params.grammar = options.grammar;
  if (options.jsonSchema !== undefined) params.json_schema = JSON.stringify(options.jsonSchema);
  return params;
}

/** Return the constraint run() adds when the contract is constrained: GBNF for labels, a schema for JSON. */
export function contractConstraint(contract: Contract): Pick<GenerateOptions, 'grammar' | 'jsonSchema'> {
  if (!contract.constrained) return {};
  if (contract.task === 'labels' && contract.labels) return { grammar: labelsGrammar(contract.labels) };
  if (contract.task === 'json' && contract.json_schema) return { jsonSchema: contract.json_schema };
  return {};
}

function stopReason(result: Awaited<ReturnType<LlamaContext['completion']>>, cancelled: boolean): StopReason {
  if (cancelled || result.interrupted) return 'cancelled';
  if (result.stopped_eos) return 'eos';
  if (result.stopped_word) return 'stop_string';
  if (result.stopped_limit) return 'max_tokens';
  if (result.context_full) return 'context_full';
  return 'unknown';
}

function metadataBool(value: unknown): boolean | null {
  const text = String(value).toLowerCase();
  if (text === 'true' || text === '1') return true;
  if (text === 'false' || text === '0') return false;
  return null;
}

export class LlamaSession {
  private context: LlamaContext | null;
  private busy = false;
  private switching = false;
  private cancelRequested = false;

  private constructor(context: LlamaContext) {
    this.context = context;
  }

  /**
   * Return the GGUF at `path` loaded by llama.rn with the build's context length; refuse it when the BOS
   * flag llama.rn reports contradicts any of `contracts` (the model's, or a fleet's base and specialists').
   */
  static async open(
    path: string, manifest: EdgepackManifest, contracts: readonly Contract[], options: SessionOptions,
  ): Promise<LlamaSession> {
    const onProgress = options.onProgress;
    const context = await initLlama(
      {
        n_ctx: manifest.model.context_length,
        swa_full: manifest.model.full_window_cache,
        ...options.contextParams,
        model: path,
      },
      onProgress ? (percent: number) => onProgress({ phase: 'load', percent } satisfies LoadProgress) : undefined,
    );
    const reported = (context.model.metadata as Record<string, unknown>)['tokenizer.ggml.add_bos_token'];
    const contradicted = contracts.find((c) => reported !== undefined && metadataBool(reported) !== c.add_bos);
    if (contradicted !== undefined) {
      await context.release();
      throw new EdgeModelError(
        'runtime_mismatch',
        `llama.rn reports tokenizer.ggml.add_bos_token=${String(reported)} but the contract says add_bos=` +
          `${contradicted.add_bos}; rebuild with edgepack so the GGUF and edgepack.json agree.`,
      );
    }
    return new LlamaSession(context);
  }

  private requireContext(): LlamaContext {
    if (this.context === null) {
      throw new EdgeModelError('released', 'the model was released; load it again');
    }
    return this.context;
  }

  /** Generate from a raw prompt (no template applied) with the contract's limits and sampling, streaming tokens. */
  async generate(contract: Contract, prompt: string, options: GenerateOptions = {}): Promise<GenerateResult> {
    const context = this.requireContext();
    if (this.busy || this.switching) {
      throw new EdgeModelError('busy', 'a generation is already running on this model; cancel it or wait');
    }
    const start = Date.now();
    if (options.signal?.aborted) {
      return {
        text: '', stoppedBy: 'cancelled', tokensPredicted: 0, tokensEvaluated: 0,
        latencyMs: 0, firstTokenMs: null, tokensPerSecond: null,
      };
    }
    this.busy = true;
    this.cancelRequested = false;
    const onAbort = () => void this.cancel();
    options.signal?.addEventListener('abort', onAbort);
    let firstTokenAt: number | null = null;
    let text = '';
    try {
      const result = await context.completion(completionParams(contract, prompt, options), (data: TokenData) => {
        firstTokenAt ??= Date.now();
        text += data.token;
        options.onToken?.(data.token, text);
      });
      const latencyMs = Date.now() - start;
      const perSecond = result.timings?.predicted_per_second;
      return {
        text: result.text,
        stoppedBy: stopReason(result, this.cancelRequested),
        tokensPredicted: result.tokens_predicted,
        tokensEvaluated: result.tokens_evaluated,
        latencyMs,
        firstTokenMs: firstTokenAt === null ? null : firstTokenAt - start,
        tokensPerSecond: typeof perSecond === 'number' ? perSecond : null,
      };
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      this.busy = false;
    }
  }

  /** Run the task: render the contract's prompt, generate under its limits, parse the answer. */
  async run(contract: Contract, input: string, instruction: string, options: RunOptions): Promise<RunResult> {
    const prompt = renderPrompt(contract, input, instruction);
    const generation = await this.generate(contract, prompt, { ...options, ...contractConstraint(contract) });
    if (generation.stoppedBy === 'cancelled') {
      throw new EdgeModelError('cancelled', 'the generation was cancelled');
    }
    return { ...parseOutput(contract, generation.text), prompt, generation };
  }

  /**
   * Make the GGUF LoRA adapter at `path` the only one applied, at scale 1. Refused (before anything changes)
   * while a generation runs or after release(); llama.rn's own failures are thrown as they are.
   */
  async applyAdapter(path: string): Promise<void> {
    const context = this.requireContext();
    if (this.busy || this.switching) {
      throw new EdgeModelError('busy', 'the model is generating or switching adapters; wait for it to finish');
    }
    this.switching = true;
    try {
      // applyLoraAdapters loads the new adapter before it frees the applied one: remove that first, so the
      // phone never holds two adapters at once.
      await context.removeLoraAdapters();
      await context.applyLoraAdapters([{ path, scaled: 1.0 }]);
      // llama.rn reuses the KV cache of the previous prompt's common prefix (its rn-completion.cpp), which
      // was computed under the previous adapter: start the next prompt from an empty cache.
      await context.clearCache(false);
    } finally {
      this.switching = false;
    }
  }

  /** Stop the running generation (llama.rn's stopCompletion); a no-op when none is running. */
  async cancel(): Promise<void> {
    if (this.context === null || !this.busy) return;
    this.cancelRequested = true;
    await this.context.stopCompletion();
  }

  /** Free the native context; the session cannot be used afterwards. */
  async release(): Promise<void> {
    const context = this.context;
    this.context = null;
    if (context !== null) await context.release();
  }
}
