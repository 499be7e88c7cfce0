/**
 * EdgeFleet: a fleet of fine-tuned specialists on the phone, one base model and a LoRA adapter each.
 *
 * The base GGUF is loaded once (the same checks and loading path as EdgeModel); every adapter file is
 * located or downloaded and checked against edgepack.json on load. use(name) makes llama.rn apply
 * that specialist's adapter (and only it), and run() answers under that specialist's contract exactly
 * as EdgeModel.run() does under the model's.
 */

import type { Contract } from './contract';
import { EdgeModelError } from './errors';
import {
  LlamaSession,
  type GenerateOptions,
  type GenerateResult,
  type RunOptions,
  type RunResult,
  type SessionOptions,
} from './llamaSession';
import { readManifest, type EdgepackManifest, type SpecialistInfo } from './manifest';
import { fleetFileSource, resolveModelFile, type FleetSource } from './modelFile';

export interface FleetLoadOptions extends SessionOptions {
  source: FleetSource;
  /** The specialist applied after loading (default: the first in edgepack.json). */
  specialist?: string;
}

function specialistNamed(manifest: EdgepackManifest, name: string): SpecialistInfo {
  const found = manifest.specialists.find((s) => s.name === name);
  if (found === undefined) {
    const known = manifest.specialists.map((s) => JSON.stringify(s.name)).join(', ');
    throw new EdgeModelError(
      'unknown_specialist', `no specialist ${JSON.stringify(name)} in edgepack.json; its specialists are ${known}`,
    );
  }
  return found;
}

export class EdgeFleet {
  readonly manifest: EdgepackManifest;
  /** The base GGUF on the device. */
  readonly modelPath: string;
  /** Each specialist's adapter file on the device, by name. */
  readonly adapterPaths: Readonly<Record<string, string>>;
  private readonly session: LlamaSession;
  private active: SpecialistInfo | null = null;

  private constructor(
    manifest: EdgepackManifest, modelPath: string, adapterPaths: Record<string, string>, session: LlamaSession,
  ) {
    this.manifest = manifest;
    this.modelPath = modelPath;
    this.adapterPaths = adapterPaths;
    this.session = session;
  }

  /**
   * Return a fleet ready to run: the base and every adapter located or downloaded and verified, the base
   * loaded by llama.rn once, and `options.specialist` (else the first) applied.
   */
  static async load(options: FleetLoadOptions): Promise<EdgeFleet> {
    const manifest = readManifest(options.manifest);
    const first = manifest.specialists[0];
    if (first === undefined) {
      throw new EdgeModelError(
        'manifest_invalid', 'edgepack.json lists no specialists: it describes one model; load it with EdgeModel.load',
      );
    }
    const initial = specialistNamed(manifest, options.specialist ?? first.name);
    const fs = options.fileSystem;
    const source = (file: string) => fleetFileSource(options.source, file);
    const path = await resolveModelFile(fs, source(manifest.model.file), manifest.model, options);
    const adapterPaths: Record<string, string> = {};
    for (const s of manifest.specialists) {
      const file = { file: s.lora_adapter, sha256: s.sha256, bytes: s.bytes };
      adapterPaths[s.name] = await resolveModelFile(fs, source(file.file), file, options);
    }
    const contracts = [manifest.contract, ...manifest.specialists.map((s) => s.contract)];
    const session = await LlamaSession.open(path, manifest, contracts, options);
    const fleet = new EdgeFleet(manifest, path, adapterPaths, session);
    try {
      await fleet.use(initial.name);
    } catch (error) {
      await fleet.release();
      throw error;
    }
    return fleet;
  }

  /** The specialists' names, in edgepack.json's order. */
  get specialists(): string[] {
    return this.manifest.specialists.map((s) => s.name);
  }

  /** The specialist whose adapter is applied (null only after a failed use()). */
  get specialist(): SpecialistInfo | null {
    return this.active;
  }

  /** The applied specialist's contract, or throw when a failed use() left none applied. */
  private requireContract(): Contract {
    if (this.active === null) {
      throw new EdgeModelError('adapter_failed', 'no specialist is applied (the last use() failed); call use(name)');
    }
    return this.active.contract;
  }

  /**
   * Apply specialist `name`'s adapter instead of the current one (a no-op when it is already applied).
   * Unknown names throw EdgeModelError('unknown_specialist'); while a generation runs, 'busy'.
   */
  async use(name: string): Promise<void> {
    const specialist = specialistNamed(this.manifest, name);
    if (this.active?.name === name) return;
    const path = this.adapterPaths[name] as string;
    try {
      await this.session.applyAdapter(path);
    } catch (error) {
      if (error instanceof EdgeModelError) throw error; // busy or released: nothing was changed
      this.active = null; // llama.rn may have removed the previous adapter already
      const reason = error instanceof Error ? error.message : String(error);
      throw new EdgeModelError(
        'adapter_failed',
        `llama.rn could not apply ${specialist.lora_adapter} (${reason}); no specialist is applied: call use() again`,
      );
    }
    this.active = specialist;
  }

  /** Generate from a raw prompt with the applied specialist (its contract's limits and sampling). */
  async generate(prompt: string, options: GenerateOptions = {}): Promise<GenerateResult> {
    return this.session.generate(this.requireContract(), prompt, options);
  }

  /** Run the applied specialist's task: its contract's prompt, limits and parsing, as EdgeModel.run(). */
  async run(input: string, instruction = '', options: RunOptions = {}): Promise<RunResult> {
    return this.session.run(this.requireContract(), input, instruction, options);
  }

  /** Stop the running generation (llama.rn's stopCompletion); a no-op when none is running. */
  cancel(): Promise<void> {
    return this.session.cancel();
  }

  /** Free the native context; the fleet cannot be used afterwards. */
  release(): Promise<void> {
    return this.session.release();
  }
}
