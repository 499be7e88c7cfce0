/**
 * EdgeFleet against llama.rn's own jest mock, which replaces only llama.rn's native (JSI) layer: the
 * adapter calls recorded here are exactly those that would cross into native code on a phone.
 */

import { labelsGrammar, renderPrompt, type JsonObject } from '../src/contract';
import { EdgeFleet } from '../src/EdgeFleet';
import { EdgeModel } from '../src/EdgeModel';
import { readManifest } from '../src/manifest';
import { fakeModelBytes, MemoryFileSystem, sha256Hex } from './memoryFileSystem';
import { captureNative, type Native } from './nativeMock';

jest.mock('llama.rn', () => require('llama.rn/jest/mock'));

let native: Native;

beforeAll(async () => {
  native = await captureNative();
});

beforeEach(() => {
  Object.values(native).forEach((fn) => fn.mockClear());
});

const BASE = fakeModelBytes(4_096);
const ADAPTERS: Record<string, Uint8Array> = { router: fakeModelBytes(1_024), extractor: fakeModelBytes(1_536) };
const LABELS = ['billing', 'cancel_order'];
const SCHEMA: JsonObject = {
  type: 'object', required: ['order'], additionalProperties: false, properties: { order: { type: 'string' } },
};
const PROMPT = {
  prefix: '<start_of_turn>user\n', template: '{instruction}\n\n{input}',
  suffix: '<end_of_turn>\n<start_of_turn>model\n', source: 'chat_template',
};
const CONTRACTS: Record<string, Record<string, unknown>> = {
  router: {
    task: 'labels', labels: LABELS, constrained: true, max_new_tokens: 4, prompt: PROMPT,
    stop_strings: ['<end_of_turn>'], eos_ids: [1],
  },
  extractor: {
    task: 'json', json_schema: SCHEMA, constrained: true, max_new_tokens: 64, eos_ids: [1],
    prompt: { prefix: 'Extract: ', template: '{input}', suffix: '\n' },
  },
};

function fleetManifest(): Record<string, unknown> {
  return {
    target: 'react-native',
    runtime: 'llama.rn 0.12.9',
    edgepack_version: '0.1.0',
    model: {
      name: 'support', file: 'model-Q4_K_M.gguf', format: 'gguf', quant: 'Q4_K_M', context_length: 2048,
      sha256: sha256Hex(BASE), bytes: BASE.length,
    },
    specialists: Object.entries(ADAPTERS).map(([name, body]) => ({
      name, lora_adapter: `adapter-${name}.gguf`, sha256: sha256Hex(body), bytes: body.length,
      contract: CONTRACTS[name],
    })),
    contract: { task: 'text', eos_ids: [1], max_new_tokens: 16 },
  };
}

function bundledFiles(): MemoryFileSystem {
  const fs = new MemoryFileSystem();
  fs.bundle.set('model-Q4_K_M.gguf', BASE);
  for (const [name, body] of Object.entries(ADAPTERS)) fs.bundle.set(`adapter-${name}.gguf`, body);
  return fs;
}

async function load(specialist?: string, manifest: unknown = fleetManifest()): Promise<EdgeFleet> {
  return EdgeFleet.load({
    manifest, source: { kind: 'bundled' }, fileSystem: bundledFiles(), ...(specialist ? { specialist } : {}),
  });
}

/** The adapter calls that reached the native layer, in order. */
function adapterCalls(): string[] {
  const calls = [
    ...native.removeLoraAdapters.mock.invocationCallOrder.map((order) => ({ order, call: 'remove' })),
    ...native.applyLoraAdapters.mock.calls.map((args, i) => ({
      order: native.applyLoraAdapters.mock.invocationCallOrder[i]!,
      call: `apply ${JSON.stringify(args[1])}`,
    })),
    ...native.clearCache.mock.invocationCallOrder.map((order) => ({ order, call: 'clearCache' })),
  ];
  return calls.sort((a, b) => a.order - b.order).map((c) => c.call);
}

function lastCompletionParams(): Record<string, unknown> {
  const call = native.completion.mock.calls.at(-1);
  if (!call) throw new Error('llamaCompletion was not called');
  return call[1] as Record<string, unknown>;
}

test('load opens the base once with the build context and applies the first specialist at scale 1', async () => {
  const fleet = await load();
  expect(native.initContext).toHaveBeenCalledTimes(1);
  const params = native.initContext.mock.calls[0]![1] as Record<string, unknown>;
  // A manifest without full_window_cache (an older build) asks llama.rn for the window only.
  expect(params).toMatchObject({ model: '/bundle/model-Q4_K_M.gguf', n_ctx: 2048, swa_full: false });
  expect(params.lora_list).toBeUndefined(); // the base alone: adapters are applied afterwards
  expect(fleet.specialists).toEqual(['router', 'extractor']);
  expect(fleet.specialist?.name).toBe('router');
  expect(fleet.adapterPaths).toEqual({
    router: '/bundle/adapter-router.gguf', extractor: '/bundle/adapter-extractor.gguf',
  });
  expect(adapterCalls()).toEqual(['remove', 'apply [{"path":"/bundle/adapter-router.gguf","scaled":1}]', 'clearCache']);
  await fleet.release();
});

test('use(router) then use(extractor) removes the applied adapter, then applies the extractor\'s', async () => {
  const fleet = await load();
  await fleet.use('router'); // already applied: nothing crosses to native code
  native.removeLoraAdapters.mockClear();
  native.applyLoraAdapters.mockClear();
  native.clearCache.mockClear();

  await fleet.use('extractor');
  expect(adapterCalls()).toEqual([
    'remove', 'apply [{"path":"/bundle/adapter-extractor.gguf","scaled":1}]', 'clearCache',
  ]);
  // The KV cache llama.rn would reuse was computed under the router's adapter.
  expect(native.clearCache.mock.calls[0]![1]).toBe(false);
  expect(fleet.specialist?.name).toBe('extractor');
  await fleet.use('router');
  expect(native.applyLoraAdapters.mock.calls.at(-1)![1]).toEqual([{ path: '/bundle/adapter-router.gguf', scaled: 1 }]);
  expect(native.initContext).toHaveBeenCalledTimes(1); // the base is never loaded again
  await fleet.release();
});

test('run() answers under the applied specialist\'s own contract', async () => {
  const fleet = await load();
  const routed = await fleet.run('my card got declined', 'Route.');
  const router = readManifest(fleetManifest()).specialists[0]!.contract;
  expect(lastCompletionParams()).toMatchObject({
    prompt: renderPrompt(router, 'my card got declined', 'Route.'), n_predict: 4, stop: ['<end_of_turn>'],
    grammar: labelsGrammar(LABELS),
  });
  expect(lastCompletionParams().json_schema).toBeUndefined();
  expect(routed.error).toEqual({ code: 'unknown_label', path: '' }); // the mock answers "*giggles*"

  await fleet.use('extractor');
  native.completion.mockImplementationOnce(async () => ({
    text: '{"order": "A-17"}', stopped_eos: true, tokens_predicted: 6, tokens_evaluated: 9,
  }));
  const extracted = await fleet.run('where is order A-17?');
  expect(lastCompletionParams()).toMatchObject({ prompt: 'Extract: where is order A-17?\n', n_predict: 64, stop: [] });
  expect(JSON.parse(lastCompletionParams().json_schema as string)).toEqual(SCHEMA);
  expect(lastCompletionParams().grammar).toBeUndefined();
  expect(extracted).toMatchObject({ ok: true, value: { order: 'A-17' } });
  await fleet.release();
});

test('an unknown specialist is refused with unknown_specialist, naming the known ones', async () => {
  await expect(load('summarizer')).rejects.toMatchObject({
    code: 'unknown_specialist', message: expect.stringContaining('"router", "extractor"'),
  });
  expect(native.initContext).not.toHaveBeenCalled();

  const fleet = await load('extractor');
  native.applyLoraAdapters.mockClear();
  await expect(fleet.use('Router')).rejects.toMatchObject({ code: 'unknown_specialist' });
  expect(native.applyLoraAdapters).not.toHaveBeenCalled();
  expect(fleet.specialist?.name).toBe('extractor'); // still answering as before
  await fleet.release();
});

test('a damaged adapter file is refused before llama.rn loads anything', async () => {
  const fs = bundledFiles();
  fs.bundle.set('adapter-extractor.gguf', new Uint8Array(ADAPTERS.extractor!).fill(0, 0, 8)); // same size
  await expect(EdgeFleet.load({ manifest: fleetManifest(), source: { kind: 'bundled' }, fileSystem: fs }))
    .rejects.toMatchObject({ code: 'hash_mismatch', message: expect.stringContaining('adapter-extractor.gguf') });
  expect(native.initContext).not.toHaveBeenCalled();
});

test('a downloaded fleet fetches every file from the folder URL and verifies it', async () => {
  const fs = new MemoryFileSystem();
  fs.served.set('https://cdn.example/fleet/model-Q4_K_M.gguf', { body: BASE });
  for (const [name, body] of Object.entries(ADAPTERS)) {
    fs.served.set(`https://cdn.example/fleet/adapter-${name}.gguf`, { body });
  }
  const fleet = await EdgeFleet.load({
    manifest: fleetManifest(), source: { kind: 'download', baseUrl: 'https://cdn.example/fleet/' }, fileSystem: fs,
  });
  expect(fs.requests.map((r) => r.url)).toEqual([
    'https://cdn.example/fleet/model-Q4_K_M.gguf', 'https://cdn.example/fleet/adapter-router.gguf',
    'https://cdn.example/fleet/adapter-extractor.gguf',
  ]);
  const hashPrefix = sha256Hex(ADAPTERS.extractor!).slice(0, 12);
  expect(fleet.adapterPaths.extractor).toBe(`${fs.modelDir}/${hashPrefix}-adapter-extractor.gguf`);
  await fleet.release();
});

test('a failed adapter application leaves no specialist: run() refuses until use() succeeds', async () => {
  const fleet = await load();
  native.applyLoraAdapters.mockImplementationOnce(async () => {
    throw new Error('LoRA tensor does not exist in base model');
  });
  await expect(fleet.use('extractor')).rejects.toMatchObject({
    code: 'adapter_failed', message: expect.stringContaining('adapter-extractor.gguf'),
  });
  expect(fleet.specialist).toBeNull();
  await expect(fleet.run('x')).rejects.toMatchObject({ code: 'adapter_failed' });
  expect(native.completion).not.toHaveBeenCalled();
  await fleet.use('extractor');
  expect(fleet.specialist?.name).toBe('extractor');
  await fleet.release();
});

test('switching while a generation runs is refused, not interleaved', async () => {
  const fleet = await load();
  let finish: (() => void) | undefined;
  native.completion.mockImplementationOnce(async () => {
    await new Promise<void>((resolve) => { finish = resolve; });
    return { text: 'billing', stopped_eos: true, tokens_predicted: 1 };
  });
  const running = fleet.run('x');
  native.applyLoraAdapters.mockClear();
  await expect(fleet.use('extractor')).rejects.toMatchObject({ code: 'busy' });
  expect(native.applyLoraAdapters).not.toHaveBeenCalled();
  await new Promise((resolve) => setTimeout(resolve, 0));
  finish?.();
  expect((await running).value).toBe('billing');
  expect(fleet.specialist?.name).toBe('router');
  await fleet.release();
});

test('a one-model edgepack.json is refused by EdgeFleet and still loads as an EdgeModel', async () => {
  const single = fleetManifest();
  delete single.specialists;
  await expect(load(undefined, single)).rejects.toMatchObject({
    code: 'manifest_invalid', message: expect.stringContaining('EdgeModel.load'),
  });
  // And a fleet's edgepack.json loads as one model too: its base, under the base contract.
  const base = await EdgeModel.load({
    manifest: fleetManifest(), source: { kind: 'bundled' }, fileSystem: bundledFiles(),
  });
  expect(base.contract.task).toBe('text');
  expect(native.applyLoraAdapters).not.toHaveBeenCalled();
  await base.release();
});

test.each([
  [{ lora_adapter: '../adapter.gguf' }, 'specialists[1]: "lora_adapter" must be a plain file name'],
  [{ sha256: 'ABC' }, 'specialists[1]: "sha256" must be 64 lowercase hex digits'],
  [{ name: 'router' }, 'specialists[1]: specialist "router" is listed twice'],
  [{ contract: { task: 3 } }, 'specialist "extractor": contract field "task" must be a string'],
])('a damaged specialist entry is refused naming it (%o)', (change, message) => {
  const manifest = fleetManifest();
  const specialists = manifest.specialists as Array<Record<string, unknown>>;
  Object.assign(specialists[1]!, change);
  expect(() => readManifest(manifest)).toThrow(`edgepack.json: ${message}`);
});
