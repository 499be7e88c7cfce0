/**
 * EdgeModel: one fine-tuned model on the phone, driven exactly as its task contract says.
 *
 * llama.rn runs the GGUF; this class only decides what to send it. The prompt is rendered by the
 * contract (renderPrompt), generation stops on the contract's stop strings and on the model's
 * end-of-generation tokens, and the answer is parsed by the contract (parseOutput), with no repair.
 *
 * BOS: llama.rn has no per-request BOS option. It tokenizes a raw prompt with
 * llama_vocab_get_add_bos(), i.e. the GGUF's `tokenizer.ggml.add_bos_token`; edgepack checks at
 * build time that this flag equals the contract's add_bos, and load() checks it again from the
 * metadata llama.rn reports.
 */

import { initLlama, type CompletionParams, type ContextParams, type LlamaContext, type TokenData } from 'llama.rn';

import { labelsGrammar, parseOutput, renderPrompt, type Contract, type JsonObject, type ParseResult } from './contract';
import { EdgeModelError } from './errors';
import type { ModelFileSystem } from './fileSystem';
import { readManifest, type EdgepackManifest } from './manifest';
import { resolveModelFile, type LoadProgress, type ModelFileOptions, type ModelSource } from './modelFile';

export interface LoadOptions extends ModelFileOptions {
  /** edgepack.json as shipped with the app (e.g. `require('./edgepack.json')`). */
  manifest: unknown;
  source: ModelSource;
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

export class EdgeModel {
  readonly manifest: EdgepackManifest;
  readonly contract: Contract;
  readonly modelPath: string;
  private context: LlamaContext | null;
  private busy = false;
  private cancelRequested = false;

  private constructor(manifest: EdgepackManifest, modelPath: string, context: LlamaContext) {
    this.manifest = manifest;
    this.contract = manifest.contract;
    this.modelPath = modelPath;
    this.context = context;
  }

  /** Return a model ready to run: the file located or downloaded, verified, and loaded by llama.rn. */
  static async load(options: LoadOptions): Promise<EdgeModel> {
    const manifest = readManifest(options.manifest);
    const path = await resolveModelFile(options.fileSystem, options.source, manifest.model, options);
    const onProgress = options.onProgress;
    const context = await initLlama(
      { n_ctx: manifest.model.context_length, ...options.contextParams, model: path },
      onProgress ? (percent: number) => onProgress({ phase: 'load', percent } satisfies LoadProgress) : undefined,
    );
    const reported = (context.model.metadata as Record<string, unknown>)['tokenizer.ggml.add_bos_token'];
    if (reported !== undefined && metadataBool(reported) !== manifest.contract.add_bos) {
      await context.release();
      throw new EdgeModelError(
        'runtime_mismatch',
        `llama.rn reports tokenizer.ggml.add_bos_token=${String(reported)} but the contract says add_bos=` +
          `${manifest.contract.add_bos}; rebuild with edgepack so the GGUF and edgepack.json agree.`,
      );
    }
    return new EdgeModel(manifest, path, context);
  }

  private requireContext(): LlamaContext {
    if (this.context === null) {
      throw new EdgeModelError('released', 'the model was released; load it again');
    }
    return this.context;
  }

  /** Generate from a raw prompt (no template applied), streaming tokens; cancel() or signal stops it. */
  async generate(prompt: string, options: GenerateOptions = {}): Promise<GenerateResult> {
    const context = this.requireContext();
    if (this.busy) {
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
      const result = await context.completion(completionParams(this.contract, prompt, options), (data: TokenData) => {
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
  async run(
    input: string, instruction = '', options: Omit<GenerateOptions, 'grammar' | 'jsonSchema'> = {},
  ): Promise<RunResult> {
    const prompt = renderPrompt(this.contract, input, instruction);
    const generation = await this.generate(prompt, { ...options, ...contractConstraint(this.contract) });
    if (generation.stoppedBy === 'cancelled') {
      throw new EdgeModelError('cancelled', 'the generation was cancelled');
    }
    return { ...parseOutput(this.contract, generation.text), prompt, generation };
  }

  /** Stop the running generation (llama.rn's stopCompletion); a no-op when none is running. */
  async cancel(): Promise<void> {
    if (this.context === null || !this.busy) return;
    this.cancelRequested = true;
    await this.context.stopCompletion();
  }

  /** Free the native context; the model cannot be used afterwards. */
  async release(): Promise<void> {
    const context = this.context;
    this.context = null;
    if (context !== null) await context.release();
  }
}
