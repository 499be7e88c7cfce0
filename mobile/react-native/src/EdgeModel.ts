/**
 * EdgeModel: one fine-tuned model on the phone, driven exactly as its task contract says.
 *
 * The file is located or downloaded and checked against edgepack.json (modelFile.ts), then llama.rn
 * loads it and runs it under the contract (llamaSession.ts: prompt, stops, sampling, parsing, BOS).
 */

import type { Contract } from './contract';
import {
  LlamaSession,
  type GenerateOptions,
  type GenerateResult,
  type RunOptions,
  type RunResult,
  type SessionOptions,
} from './llamaSession';
import { readManifest, type EdgepackManifest } from './manifest';
import { resolveModelFile, type ModelSource } from './modelFile';

export interface LoadOptions extends SessionOptions {
  source: ModelSource;
}

export class EdgeModel {
  readonly manifest: EdgepackManifest;
  readonly contract: Contract;
  readonly modelPath: string;
  private readonly session: LlamaSession;

  private constructor(manifest: EdgepackManifest, modelPath: string, session: LlamaSession) {
    this.manifest = manifest;
    this.contract = manifest.contract;
    this.modelPath = modelPath;
    this.session = session;
  }

  /** Return a model ready to run: the file located or downloaded, verified, and loaded by llama.rn. */
  static async load(options: LoadOptions): Promise<EdgeModel> {
    const manifest = readManifest(options.manifest);
    const path = await resolveModelFile(options.fileSystem, options.source, manifest.model, options);
    return new EdgeModel(manifest, path, await LlamaSession.open(path, manifest, [manifest.contract], options));
  }

  /** Generate from a raw prompt (no template applied), streaming tokens; cancel() or signal stops it. */
  generate(prompt: string, options: GenerateOptions = {}): Promise<GenerateResult> {
    return this.session.generate(this.contract, prompt, options);
  }

  /** Run the task: render the contract's prompt, generate under its limits, parse the answer. */
  run(input: string, instruction = '', options: RunOptions = {}): Promise<RunResult> {
    return this.session.run(this.contract, input, instruction, options);
  }

  /** Stop the running generation (llama.rn's stopCompletion); a no-op when none is running. */
  cancel(): Promise<void> {
    return this.session.cancel();
  }

  /** Free the native context; the model cannot be used afterwards. */
  release(): Promise<void> {
    return this.session.release();
  }
}
