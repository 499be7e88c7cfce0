/** Getting the model onto the phone: download, resume, verification, bundled files, cancel. */

import { EdgeModelError } from '../src/errors';
import type { ModelInfo } from '../src/manifest';
import { localFileName, resolveModelFile, type LoadProgress } from '../src/modelFile';
import { fakeModelBytes, MemoryFileSystem, sha256Hex } from './memoryFileSystem';

const URL = 'https://models.example/model-Q4_K_M.gguf';
const BODY = fakeModelBytes(10_000);

function modelInfo(body: Uint8Array = BODY): ModelInfo {
  return {
    name: 'tiny', file: 'model-Q4_K_M.gguf', format: 'gguf', quant: 'Q4_K_M', context_length: 1024,
    full_window_cache: false, sha256: sha256Hex(body), bytes: body.length,
  };
}

function setup(served: Partial<{ ignoreRange: boolean; dropAfter: number; failWith: number }> = {}) {
  const fs = new MemoryFileSystem();
  fs.served.set(URL, { body: BODY, ...served });
  const model = modelInfo();
  const final = `${fs.modelDir}/${localFileName(model)}`;
  return { fs, model, final, part: `${final}.part` };
}

async function expectError(promise: Promise<unknown>, code: string, message: RegExp): Promise<EdgeModelError> {
  const error = await promise.then(
    () => { throw new Error('expected a rejection'); },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(EdgeModelError);
  expect((error as EdgeModelError).code).toBe(code);
  expect((error as EdgeModelError).message).toMatch(message);
  return error as EdgeModelError;
}

test('a first download is verified, renamed into place and reports progress', async () => {
  const { fs, model, final, part } = setup();
  const progress: LoadProgress[] = [];
  const onProgress = (p: LoadProgress) => progress.push(p);
  const path = await resolveModelFile(fs, { kind: 'download', url: URL }, model, { onProgress });
  expect(path).toBe(final);
  expect(sha256Hex(fs.files.get(final)!)).toBe(model.sha256);
  expect(fs.files.has(part)).toBe(false);
  expect(fs.requests).toEqual([{ url: URL, headers: {}, append: false }]);
  expect(progress).toContainEqual({ phase: 'download', receivedBytes: BODY.length, totalBytes: BODY.length });
  expect(progress.at(-1)).toEqual({ phase: 'verify' });
});

test('the local name carries the hash, so a retrained model never reuses an old file', () => {
  expect(localFileName(modelInfo())).toBe(`${sha256Hex(BODY).slice(0, 12)}-model-Q4_K_M.gguf`);
});

test('an interrupted download resumes with a Range request and appends', async () => {
  const { fs, model, final, part } = setup({ dropAfter: 4_000 });
  const first = resolveModelFile(fs, { kind: 'download', url: URL }, model);
  await expectError(first, 'download_failed', /load again to resume/);
  expect(fs.files.get(part)!.length).toBe(4_000);
  expect(fs.files.has(final)).toBe(false);

  const progress: LoadProgress[] = [];
  const headers = { Authorization: 'Bearer t' };
  await resolveModelFile(fs, { kind: 'download', url: URL, headers }, model, { onProgress: (p) => progress.push(p) });
  expect(fs.requests[1]).toEqual({ url: URL, headers: { ...headers, Range: 'bytes=4000-' }, append: true });
  expect(sha256Hex(fs.files.get(final)!)).toBe(model.sha256);
  // Progress counts the bytes already on disk: the bar continues where it stopped.
  expect(progress).toContainEqual({ phase: 'download', receivedBytes: BODY.length, totalBytes: BODY.length });
});

test('a server that ignores Range gets one clean restart, never a spliced file', async () => {
  const { fs, model, final, part } = setup({ ignoreRange: true });
  fs.files.set(part, BODY.slice(0, 3_000));
  await resolveModelFile(fs, { kind: 'download', url: URL }, model);
  expect(fs.requests.map((r) => [r.headers.Range, r.append])).toEqual([['bytes=3000-', true], [undefined, false]]);
  expect(sha256Hex(fs.files.get(final)!)).toBe(model.sha256);
});

test('an HTTP error keeps the bytes already downloaded and drops the error page', async () => {
  const { fs, model, part } = setup({ failWith: 503 });
  fs.files.set(part, BODY.slice(0, 2_500));
  await expectError(resolveModelFile(fs, { kind: 'download', url: URL }, model), 'download_failed', /HTTP 503/);
  expect(fs.files.get(part)).toEqual(BODY.slice(0, 2_500));
});

test('a hash mismatch deletes the file and says so', async () => {
  const { fs } = setup();
  const tampered = BODY.slice();
  tampered[5_000] = (tampered[5_000]! + 1) % 256;
  const model = { ...modelInfo(), sha256: sha256Hex(tampered) }; // the server has other bytes than the build
  const error = await expectError(
    resolveModelFile(fs, { kind: 'download', url: URL }, model), 'hash_mismatch', /does not match edgepack\.json/,
  );
  expect(error.message).toContain('the file was deleted');
  expect(error.message).toContain(sha256Hex(BODY));
  expect([...fs.files.keys()]).toEqual([]);
});

test('a file already under its final name is used without touching the network', async () => {
  const { fs, model, final } = setup();
  fs.files.set(final, BODY);
  expect(await resolveModelFile(fs, { kind: 'download', url: URL }, model)).toBe(final);
  expect(fs.requests).toEqual([]);
});

test('reverify hashes an existing file again and deletes it on mismatch', async () => {
  const { fs, model, final } = setup();
  fs.files.set(final, fakeModelBytes(BODY.length).map((b) => b ^ 1));
  await expectError(
    resolveModelFile(fs, { kind: 'download', url: URL }, model, { reverify: true }), 'hash_mismatch', /deleted/,
  );
  expect(fs.files.has(final)).toBe(false);
});

test('a bundled model is verified in place (iOS) and never deleted', async () => {
  const fs = new MemoryFileSystem();
  const model = modelInfo();
  fs.bundle.set(model.file, BODY);
  expect(await resolveModelFile(fs, { kind: 'bundled' }, model)).toBe(`/bundle/${model.file}`);

  fs.bundle.set(model.file, BODY.slice(1));
  await expectError(resolveModelFile(fs, { kind: 'bundled' }, model), 'size_mismatch', /same edgepack build/);
  expect(fs.bundle.has(model.file)).toBe(true);
});

test('a bundled model is unpacked once from the app package (Android assets)', async () => {
  const fs = new MemoryFileSystem();
  fs.bundleInPlace = false;
  const model = modelInfo();
  fs.bundle.set(model.file, BODY);
  const progress: string[] = [];
  const path = await resolveModelFile(fs, { kind: 'bundled' }, model, { onProgress: (p) => progress.push(p.phase) });
  expect(path).toBe(`${fs.modelDir}/${localFileName(model)}`);
  expect(progress).toEqual(['unpack', 'verify']);
  fs.bundle.clear();
  expect(await resolveModelFile(fs, { kind: 'bundled' }, model)).toBe(path);
});

test('a model file given by path is checked, and a wrong one is reported, not deleted', async () => {
  const fs = new MemoryFileSystem();
  const model = modelInfo();
  fs.files.set('/sdcard/model.gguf', BODY.slice(0, 10));
  const loading = resolveModelFile(fs, { kind: 'file', path: '/sdcard/model.gguf' }, model);
  await expectError(loading, 'size_mismatch', /10 bytes/);
  expect(fs.files.has('/sdcard/model.gguf')).toBe(true);
});

test('cancelling a download through the signal reports cancelled and keeps the partial file', async () => {
  const { fs, model, part } = setup();
  fs.files.set(part, BODY.slice(0, 1_000));
  fs.holdDownloads = true;
  const controller = new AbortController();
  const loading = resolveModelFile(fs, { kind: 'download', url: URL }, model, { signal: controller.signal });
  await new Promise((resolve) => setTimeout(resolve, 0));
  controller.abort();
  await expectError(loading, 'cancelled', /cancelled/);
  expect(fs.files.get(part)!.length).toBe(1_000);
});
