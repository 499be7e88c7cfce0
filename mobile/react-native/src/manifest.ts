/**
 * edgepack.json as the app reads it: which model file to load, its sha256 and size, the context
 * length it was built for, and the task contract; for a fleet, each specialist's LoRA adapter file
 * and contract. Checked on load so that a damaged or mismatched file fails with a message instead
 * of misbehaving later.
 */

import { ContractFormatError, contractFromJson, type Contract } from './contract';
import { EdgeModelError } from './errors';

/** A file the build shipped beside edgepack.json, as modelFile.ts finds and checks it. */
export interface ShippedFile {
  /** File name next to edgepack.json (and the name it is bundled or downloaded under). */
  file: string;
  sha256: string;
  bytes: number;
}

export interface ModelInfo extends ShippedFile {
  name: string;
  format: string;
  quant: string;
  context_length: number;
  /**
   * Keep a sliding-window model's local layers cached over the whole context (llama.rn's `swa_full`), so a
   * prompt reuses the cached prefix it shares with the previous one; the build asks for it only where that
   * costs little memory (edgepack's packager/window_cache.py).
   */
  full_window_cache: boolean;
}

/** A fleet specialist: the LoRA adapter llama.rn applies to the model (the fleet's base), and its contract. */
export interface SpecialistInfo {
  name: string;
  /** File name of the GGUF LoRA adapter next to edgepack.json. */
  lora_adapter: string;
  sha256: string;
  bytes: number;
  contract: Contract;
}

export interface EdgepackManifest {
  target: string;
  runtime: string;
  model: ModelInfo;
  /** The model's contract; in a fleet, the base's (each specialist has its own). */
  contract: Contract;
  /** A fleet's specialists in build order; empty for one model. */
  specialists: SpecialistInfo[];
  edgepack_version: string;
}

function fail(message: string): never {
  throw new EdgeModelError('manifest_invalid', `edgepack.json: ${message}`);
}

function field<T>(
  obj: Record<string, unknown>, key: string, check: (v: unknown) => v is T, expected: string, where = '',
): T {
  const value = obj[key];
  if (!check(value)) {
    fail(`${where}"${key}" must be ${expected}`);
  }
  return value;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isBoolean = (v: unknown): v is boolean => typeof v === 'boolean';
const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;
const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const isSha256 = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
// The file name is joined into paths on the phone: a plain name only, never a path.
const isPlainFileName = (v: unknown): v is string =>
  typeof v === 'string' && v.length > 0 && !/[/\\\0]/.test(v) && v !== '.' && v !== '..';

/** Return the contract in `data`, or throw EdgeModelError('manifest_invalid'), saying `where` it is. */
function readContract(data: unknown, where: string): Contract {
  try {
    return contractFromJson(data);
  } catch (error) {
    if (error instanceof ContractFormatError) {
      fail(where + error.message.replace(/^edgepack\.json: /, ''));
    }
    throw error;
  }
}

/** Return the fleet's specialists (none when the document describes one model). */
function readSpecialists(data: Record<string, unknown>): SpecialistInfo[] {
  if (data.specialists === undefined) return [];
  const list = data.specialists;
  if (!Array.isArray(list) || list.length === 0) {
    fail('"specialists" must be a non-empty list');
  }
  const seen = new Set<string>();
  return list.map((entry: unknown, index: number) => {
    const where = `specialists[${index}]: `;
    if (!isRecord(entry)) fail(`${where}must be an object`);
    const name = field(entry, 'name', isPlainFileName, 'a plain name', where);
    if (seen.has(name)) fail(`${where}specialist "${name}" is listed twice`);
    seen.add(name);
    return {
      name,
      lora_adapter: field(entry, 'lora_adapter', isPlainFileName, 'a plain file name', where),
      sha256: field(entry, 'sha256', isSha256, '64 lowercase hex digits', where),
      bytes: field(entry, 'bytes', isPositiveInt, 'a positive integer', where),
      contract: readContract(entry.contract, `specialist "${name}": `),
    };
  });
}

/** Return the parsed manifest, or throw EdgeModelError('manifest_invalid') naming the bad field. */
export function readManifest(data: unknown): EdgepackManifest {
  if (!isRecord(data)) {
    fail('the document must be a JSON object');
  }
  const model = field(data, 'model', isRecord, 'an object');
  const contract = readContract(data.contract, '');
  if (model.format !== 'gguf') {
    fail(`model.format is ${JSON.stringify(model.format)}; this bridge loads GGUF files with llama.rn`);
  }
  return {
    target: field(data, 'target', isString, 'a string'),
    runtime: field(data, 'runtime', isString, 'a string'),
    edgepack_version: field(data, 'edgepack_version', isString, 'a string'),
    contract,
    specialists: readSpecialists(data),
    model: {
      name: field(model, 'name', isString, 'a string'),
      file: field(model, 'file', isPlainFileName, 'a plain file name'),
      format: 'gguf',
      quant: field(model, 'quant', isString, 'a string'),
      context_length: field(model, 'context_length', isPositiveInt, 'a positive integer'),
      full_window_cache: model['full_window_cache'] === undefined
        ? false
        : field(model, 'full_window_cache', isBoolean, 'true or false'),
      sha256: field(model, 'sha256', isSha256, '64 lowercase hex digits'),
      bytes: field(model, 'bytes', isPositiveInt, 'a positive integer'),
    },
  };
}
