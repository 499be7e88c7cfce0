/**
 * Getting the verified GGUF onto the phone: bundled with the app or downloaded on first launch. The
 * same path serves a fleet's LoRA adapter files (any ShippedFile of edgepack.json).
 *
 * A model file only ever gets its final name after its sha256 matched edgepack.json, so a file
 * under the final name is known good and later launches only check its size. Downloads go to
 * `<final>.part` and resume from there with an HTTP Range request; a mismatching file is deleted
 * and reported, never used.
 */

import { EdgeModelError } from './errors';
import type { DownloadResponse, ModelFileSystem } from './fileSystem';
import type { ShippedFile } from './manifest';

export type ModelSource =
  /** Shipped inside the app (iOS: bundle resource; Android: assets/, unpacked on first launch). */
  | { kind: 'bundled' }
  /** Fetched on first launch, resumed if interrupted; headers e.g. for authorization. */
  | { kind: 'download'; url: string; headers?: Record<string, string> }
  /** Already on the device at this path (e.g. pushed with adb for development). */
  | { kind: 'file'; path: string };

/** Where a fleet's files come from (the base GGUF and every adapter), each under its name in edgepack.json. */
export type FleetSource =
  /** Every file shipped inside the app, as a bundled model is. */
  | { kind: 'bundled' }
  /** Every file fetched from one folder URL (`${baseUrl}/${file}`) on first launch, resumed if interrupted. */
  | { kind: 'download'; baseUrl: string; headers?: Record<string, string> }
  /** Every file already on the device in this folder. */
  | { kind: 'file'; dir: string };

export type LoadProgress =
  | { phase: 'download'; receivedBytes: number; totalBytes: number }
  | { phase: 'unpack' }
  | { phase: 'verify' }
  | { phase: 'load'; percent: number };

export interface ModelFileOptions {
  onProgress?: (progress: LoadProgress) => void;
  signal?: AbortSignal;
  /** Hash a file found under its final name again (default: only its size is checked). */
  reverify?: boolean;
  /** Hash a model used in place from the app bundle on every load (default true). */
  verifyBundled?: boolean;
}

/** Return the name a verified model is stored under: its hash prefix keeps two builds apart. */
export function localFileName(model: ShippedFile): string {
  return `${model.sha256.slice(0, 12)}-${model.file}`;
}

/** Return where one file of a fleet comes from. */
export function fleetFileSource(source: FleetSource, file: string): ModelSource {
  const join = (folder: string, name: string) => `${folder.replace(/\/+$/, '')}/${name}`;
  switch (source.kind) {
    case 'bundled':
      return source;
    case 'download':
      return {
        kind: 'download', url: join(source.baseUrl, encodeURIComponent(file)),
        ...(source.headers ? { headers: source.headers } : {}),
      };
    case 'file':
      return { kind: 'file', path: join(source.dir, file) };
  }
}

function throwIfCancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw new EdgeModelError('cancelled', 'loading the model was cancelled');
  }
}

/** Check a file's sha256 against the manifest; on mismatch delete it (if deletable) and throw. */
export async function verifyModelFile(
  fs: ModelFileSystem, path: string, model: ShippedFile, options: ModelFileOptions, deletable: boolean,
): Promise<void> {
  options.onProgress?.({ phase: 'verify' });
  const size = await fs.size(path);
  if (size !== model.bytes) {
    if (deletable) await fs.remove(path);
    throw new EdgeModelError(
      'size_mismatch',
      `${model.file}: ${size} bytes, but edgepack.json says ${model.bytes}` +
        (deletable ? '; the file was deleted.' : '. Bundle the file from the same edgepack build as edgepack.json.'),
    );
  }
  const actual = (await fs.sha256(path)).toLowerCase();
  if (actual !== model.sha256) {
    if (deletable) await fs.remove(path);
    throw new EdgeModelError(
      'hash_mismatch',
      `${model.file}: sha256 ${actual} does not match edgepack.json (${model.sha256})` +
        (deletable
          ? '; the file was deleted. Check that the download URL serves this build\'s model.'
          : '. Bundle the file from the same edgepack build as edgepack.json.'),
    );
  }
}

async function fileIfComplete(
  fs: ModelFileSystem, path: string, model: ShippedFile, options: ModelFileOptions,
): Promise<boolean> {
  if (!(await fs.exists(path))) return false;
  if (options.reverify) {
    await verifyModelFile(fs, path, model, options, true);
    return true;
  }
  if ((await fs.size(path)) === model.bytes) return true;
  await fs.remove(path); // cannot be this build's file: its name carries the hash
  return false;
}

async function transfer(
  fs: ModelFileSystem, source: { url: string; headers?: Record<string, string> }, part: string, offset: number,
  model: ShippedFile, options: ModelFileOptions,
): Promise<DownloadResponse> {
  const headers: Record<string, string> = { ...(source.headers ?? {}) };
  if (offset > 0) headers.Range = `bytes=${offset}-`;
  const task = fs.download({
    url: source.url,
    path: part,
    append: offset > 0,
    headers,
    onProgress: (received) =>
      options.onProgress?.({ phase: 'download', receivedBytes: offset + received, totalBytes: model.bytes }),
  });
  const onAbort = () => task.cancel();
  options.signal?.addEventListener('abort', onAbort);
  try {
    return await task.result;
  } catch (error) {
    throwIfCancelled(options.signal);
    const reason = error instanceof Error ? error.message : String(error);
    throw new EdgeModelError(
      'download_failed',
      `downloading ${model.file} from ${source.url} failed (${reason}); load again to resume.`,
    );
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}

/** Download (or resume) the model into `final`, verify it, and return `final`. */
export async function downloadModel(
  fs: ModelFileSystem, source: { url: string; headers?: Record<string, string> }, final: string,
  model: ShippedFile, options: ModelFileOptions,
): Promise<string> {
  const part = `${final}.part`;
  let offset = (await fs.exists(part)) ? await fs.size(part) : 0;
  if (offset > model.bytes) {
    await fs.remove(part);
    offset = 0;
  }
  // At most two requests: a resume, and a restart if the server ignored the Range header.
  for (let attempt = 0; offset < model.bytes && attempt < 2; attempt += 1) {
    throwIfCancelled(options.signal);
    const { status } = await transfer(fs, source, part, offset, model, options);
    if (offset > 0 && status === 200) {
      // The server sent the whole file after our partial one: what is on disk is unusable.
      await fs.remove(part);
      offset = 0;
      continue;
    }
    if (status !== 200 && status !== 206) {
      await fs.truncate(part, offset); // drop the error page the request wrote after our bytes
      throw new EdgeModelError(
        'download_failed',
        `downloading ${model.file} from ${source.url} failed with HTTP ${status}; load again to resume.`,
      );
    }
    offset = await fs.size(part);
    break;
  }
  if (offset < model.bytes) {
    throw new EdgeModelError(
      'download_failed',
      `downloading ${model.file} stopped at ${offset} of ${model.bytes} bytes; load again to resume.`,
    );
  }
  await verifyModelFile(fs, part, model, options, true);
  await fs.move(part, final);
  return final;
}

/** Return a path llama.rn can load, holding exactly the model edgepack.json describes. */
export async function resolveModelFile(
  fs: ModelFileSystem, source: ModelSource, model: ShippedFile, options: ModelFileOptions = {},
): Promise<string> {
  throwIfCancelled(options.signal);
  if (source.kind === 'file') {
    await verifyModelFile(fs, source.path, model, options, false);
    return source.path;
  }
  if (source.kind === 'bundled') {
    const direct = fs.bundledPath(model.file);
    if (direct !== null) {
      if (options.verifyBundled ?? true) await verifyModelFile(fs, direct, model, options, false);
      return direct;
    }
  }
  await fs.ensureDir(fs.modelDir);
  const final = `${fs.modelDir}/${localFileName(model)}`;
  if (await fileIfComplete(fs, final, model, options)) return final;
  if (source.kind === 'download') {
    return downloadModel(fs, source, final, model, options);
  }
  options.onProgress?.({ phase: 'unpack' });
  const part = `${final}.part`;
  await fs.copyBundled(model.file, part);
  await verifyModelFile(fs, part, model, options, true);
  await fs.move(part, final);
  return final;
}
