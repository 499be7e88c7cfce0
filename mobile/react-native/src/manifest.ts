/**
 * edgepack.json as the app reads it: which model file to load, its sha256 and size, the context
 * length it was built for, and the task contract. Checked on load so that a damaged or mismatched
 * file fails with a message instead of misbehaving later.
 */

import { ContractFormatError, contractFromJson, type Contract } from './contract';
import { EdgeModelError } from './errors';

export interface ModelInfo {
  name: string;
  /** File name of the GGUF next to edgepack.json (and the name it is bundled or downloaded under). */
  file: string;
  format: string;
  quant: string;
  context_length: number;
  sha256: string;
  bytes: number;
}

export interface EdgepackManifest {
  target: string;
  runtime: string;
  model: ModelInfo;
  contract: Contract;
  edgepack_version: string;
}

function fail(message: string): never {
  throw new EdgeModelError('manifest_invalid', `edgepack.json: ${message}`);
}

function field<T>(obj: Record<string, unknown>, key: string, check: (v: unknown) => v is T, expected: string): T {
  const value = obj[key];
  if (!check(value)) {
    fail(`"${key}" must be ${expected}`);
  }
  return value;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;
const isRecord = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const isSha256 = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
// The file name is joined into paths on the phone: a plain name only, never a path.
const isPlainFileName = (v: unknown): v is string =>
  typeof v === 'string' && v.length > 0 && !/[/\\\0]/.test(v) && v !== '.' && v !== '..';

/** Return the parsed manifest, or throw EdgeModelError('manifest_invalid') naming the bad field. */
export function readManifest(data: unknown): EdgepackManifest {
  if (!isRecord(data)) {
    fail('the document must be a JSON object');
  }
  const model = field(data, 'model', isRecord, 'an object');
  let contract: Contract;
  try {
    contract = contractFromJson(data.contract);
  } catch (error) {
    if (error instanceof ContractFormatError) {
      throw new EdgeModelError('manifest_invalid', error.message);
    }
    throw error;
  }
  if (model.format !== 'gguf') {
    fail(`model.format is ${JSON.stringify(model.format)}; this bridge loads GGUF files with llama.rn`);
  }
  return {
    target: field(data, 'target', isString, 'a string'),
    runtime: field(data, 'runtime', isString, 'a string'),
    edgepack_version: field(data, 'edgepack_version', isString, 'a string'),
    contract,
    model: {
      name: field(model, 'name', isString, 'a string'),
      file: field(model, 'file', isPlainFileName, 'a plain file name'),
      format: 'gguf',
      quant: field(model, 'quant', isString, 'a string'),
      context_length: field(model, 'context_length', isPositiveInt, 'a positive integer'),
      sha256: field(model, 'sha256', isSha256, '64 lowercase hex digits'),
      bytes: field(model, 'bytes', isPositiveInt, 'a positive integer'),
    },
  };
}
