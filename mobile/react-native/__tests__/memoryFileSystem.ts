/**
 * An in-memory ModelFileSystem and HTTP server for jest: files are byte arrays, hashes are real
 * sha256 (node:crypto), and the server honours (or, on request, ignores) Range headers, writes
 * error bodies into the file like a real download would, and can drop the connection midway.
 */

import { createHash } from 'node:crypto';

import type { DownloadRequest, DownloadTask, ModelFileSystem } from '../src/fileSystem';

export interface ServedFile {
  body: Uint8Array;
  /** Answer 200 with the whole body even when a Range is asked for. */
  ignoreRange?: boolean;
  /** Fail the transfer after this many body bytes of the next request (then reset). */
  dropAfter?: number;
  /** Answer with this status and an error page instead of the body (next request only). */
  failWith?: number;
}

export class MemoryFileSystem implements ModelFileSystem {
  readonly modelDir = '/data/models';
  readonly files = new Map<string, Uint8Array>();
  readonly served = new Map<string, ServedFile>();
  readonly requests: Array<{ url: string; headers: Record<string, string>; append: boolean }> = [];
  readonly bundle = new Map<string, Uint8Array>();
  /** iOS-like (bundle files addressable in place) or Android-like (assets copied out). */
  bundleInPlace = true;
  /** Resolve downloads only when release() is called (to test cancellation). */
  holdDownloads = false;
  private held: Array<() => void> = [];

  async ensureDir(): Promise<void> {}

  async exists(path: string): Promise<boolean> {
    return this.files.has(path);
  }

  async size(path: string): Promise<number> {
    return this.read(path).length;
  }

  async sha256(path: string): Promise<string> {
    return createHash('sha256').update(this.read(path)).digest('hex');
  }

  async remove(path: string): Promise<void> {
    this.files.delete(path);
  }

  async move(from: string, to: string): Promise<void> {
    this.files.set(to, this.read(from));
    this.files.delete(from);
  }

  async truncate(path: string, length: number): Promise<void> {
    this.files.set(path, this.read(path).slice(0, length));
  }

  bundledPath(file: string): string | null {
    return this.bundleInPlace && this.bundle.has(file) ? `/bundle/${file}` : null;
  }

  async copyBundled(file: string, dest: string): Promise<void> {
    const data = this.bundle.get(file);
    if (!data) throw new Error(`no asset ${file}`);
    this.files.set(dest, data.slice());
  }

  releaseHeld(): void {
    this.held.splice(0).forEach((resume) => resume());
  }

  download(request: DownloadRequest): DownloadTask {
    this.requests.push({ url: request.url, headers: { ...request.headers }, append: request.append });
    let cancelled = false;
    const result = (async () => {
      if (this.holdDownloads) await new Promise<void>((resume) => this.held.push(resume));
      if (cancelled) throw new Error('cancelled');
      const served = this.served.get(request.url);
      const write = (chunk: Uint8Array) => {
        const before = request.append ? (this.files.get(request.path) ?? new Uint8Array()) : new Uint8Array();
        const joined = new Uint8Array(before.length + chunk.length);
        joined.set(before);
        joined.set(chunk, before.length);
        this.files.set(request.path, joined);
      };
      if (!served || served.failWith) {
        const status = served?.failWith ?? 404;
        if (served) served.failWith = undefined;
        write(new TextEncoder().encode(`<html>error ${status}</html>`));
        return { status };
      }
      const range = /^bytes=(\d+)-$/.exec(request.headers.Range ?? '');
      const start = range && !served.ignoreRange ? Number(range[1]) : 0;
      const status = range && !served.ignoreRange ? 206 : 200;
      let body = served.body.slice(start);
      const drop = served.dropAfter;
      if (drop !== undefined) {
        served.dropAfter = undefined;
        body = body.slice(0, drop);
      }
      write(body);
      request.onProgress?.(body.length, served.body.length - start);
      if (drop !== undefined) throw new Error('connection reset');
      return { status };
    })();
    return {
      result,
      cancel: () => {
        cancelled = true;
        this.releaseHeld();
      },
    };
  }

  private read(path: string): Uint8Array {
    const data = this.files.get(path) ?? this.bundle.get(path.replace(/^\/bundle\//, ''));
    if (!data) throw new Error(`ENOENT: ${path}`);
    return data;
  }
}

/** Return deterministic pseudo-random bytes standing in for a GGUF. */
export function fakeModelBytes(length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = 12345;
  for (let i = 0; i < length; i += 1) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    out[i] = x & 0xff;
  }
  return out;
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
