/**
 * EdgeModel against llama.rn's own jest mock, which replaces only llama.rn's native (JSI) layer:
 * llama.rn's TypeScript runs as on a phone, so these tests see the exact parameters that would
 * cross into native code.
 */

import { renderPrompt, type JsonObject } from '../src/contract';
import { EdgeModel } from '../src/EdgeModel';
import { samplingFromContract } from '../src/llamaSession';
import { EdgeModelError } from '../src/errors';
import { localFileName } from '../src/modelFile';
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

const BODY = fakeModelBytes(4_096);
const LABELS = ['billing', 'cancel_order', 'say "hi"', 'two\nlines'];
const SCHEMA: JsonObject = {
  type: 'object', required: ['intent'], additionalProperties: false,
  properties: { intent: { type: 'string', enum: ['refund', 'cancel'] } },
};

function manifest(contract: Record<string, unknown>): unknown {
  return {
    target: 'react-native',
    runtime: 'llama.rn 0.12.9',
    edgepack_version: '0.1.0',
    model: {
      name: 'tiny', file: 'model-Q8_0.gguf', format: 'gguf', quant: 'Q8_0', context_length: 1024,
      full_window_cache: true, sha256: sha256Hex(BODY), bytes: BODY.length,
    },
    contract: {
      prompt: {
        prefix: '<start_of_turn>user\n', template: '{instruction}\n\n{input}',
        suffix: '<end_of_turn>\n<start_of_turn>model\n', source: 'chat_template',
      },
      stop_strings: ['<end_of_turn>'],
      eos_ids: [1, 6],
      max_new_tokens: 16,
      ...contract,
    },
  };
}

async function load(contract: Record<string, unknown> = { task: 'labels', labels: LABELS, constrained: true }) {
  const fs = new MemoryFileSystem();
  fs.bundle.set('model-Q8_0.gguf', BODY);
  const percents: number[] = [];
  const model = await EdgeModel.load({
    manifest: manifest(contract),
    source: { kind: 'bundled' },
    fileSystem: fs,
    contextParams: { n_threads: 4 },
    onProgress: (p) => {
      if (p.phase === 'load') percents.push(p.percent);
    },
  });
  return { model, fs, percents };
}

function lastCompletionParams(): Record<string, unknown> {
  const call = native.completion.mock.calls.at(-1);
  if (!call) throw new Error('llamaCompletion was not called');
  return call[1] as Record<string, unknown>;
}

test('load verifies the file and opens it with the context length of the build', async () => {
  const { model, percents } = await load();
  expect(native.initContext).toHaveBeenCalledTimes(1);
  const params = native.initContext.mock.calls[0]![1] as Record<string, unknown>;
  expect(params).toMatchObject({
    model: '/bundle/model-Q8_0.gguf', n_ctx: 1024, swa_full: true, n_threads: 4, is_model_asset: false,
  });
  expect(percents).toContain(100);
  await model.release();
});

test('run() sends the contract prompt, stops, token limit, greedy sampling and the labels grammar', async () => {
  const { model } = await load();
  const tokens: string[] = [];
  const result = await model.run('my card got declined', 'Classify.', { onToken: (t) => tokens.push(t) });

  const params = lastCompletionParams();
  expect(params.prompt).toBe(renderPrompt(model.contract, 'my card got declined', 'Classify.'));
  expect(params.prompt).toBe(
    '<start_of_turn>user\nClassify.\n\nmy card got declined<end_of_turn>\n<start_of_turn>model\n',
  );
  expect(params.stop).toEqual(['<end_of_turn>']);
  expect(params.n_predict).toBe(16);
  expect(params).toMatchObject({ temperature: 0, top_k: 1, top_p: 1, min_p: 0, seed: -1 });
  expect(params.grammar).toBe('root ::= " "? ("billing" | "cancel_order" | "say \\"hi\\"" | "two\\nlines")\n');
  expect(params.json_schema).toBeUndefined();
  expect(params.emit_partial_completion).toBe(true);

  // The mock streams " *", "g", "igg", "les", "*" and answers "*giggles*": not a label, and
  // reported as such, not repaired.
  expect(tokens).toEqual([' *', 'g', 'igg', 'les', '*']);
  expect(result.ok).toBe(false);
  expect(result.error).toEqual({ code: 'unknown_label', path: '' });
  expect(result.text).toBe('*giggles*');
  expect(result.generation.stoppedBy).toBe('eos');
  expect(result.generation.tokensPredicted).toBe(6);
  expect(result.generation.latencyMs).toBeGreaterThanOrEqual(0);
  expect(result.generation.firstTokenMs).not.toBeNull();
  await model.release();
});

test('a constrained JSON contract sends llama.rn json_schema as a string; parsing follows the contract', async () => {
  const { model } = await load({ task: 'json', json_schema: SCHEMA, constrained: true });
  native.completion.mockImplementationOnce(async () => ({
    text: '{"intent": "upgrade"}', content: '{"intent": "upgrade"}', stopped_eos: true, tokens_predicted: 5,
    tokens_evaluated: 9, interrupted: false, timings: { predicted_per_second: 40 },
  }));
  const result = await model.run('upgrade me');
  const params = lastCompletionParams();
  expect(typeof params.json_schema).toBe('string');
  expect(JSON.parse(params.json_schema as string)).toEqual(SCHEMA);
  expect(params.grammar).toBeUndefined();
  expect(result).toMatchObject({
    ok: false, value: { intent: 'upgrade' }, error: { code: 'schema_mismatch', path: '/intent' },
  });
  expect(result.generation.tokensPerSecond).toBe(40);
  await model.release();
});

test('unconstrained contracts send no grammar; invalid JSON is reported, not repaired', async () => {
  const { model } = await load({ task: 'json', json_schema: SCHEMA, constrained: false });
  native.completion.mockImplementationOnce(async () => ({
    text: '{"intent": "refund",}', stopped_eos: true, tokens_predicted: 3,
  }));
  const result = await model.run('refund please');
  expect(lastCompletionParams().json_schema).toBeUndefined();
  expect(lastCompletionParams().grammar).toBeUndefined();
  expect(result).toMatchObject({ ok: false, value: null, error: { code: 'invalid_json', path: '' } });
  await model.release();
});

test('generation defaults follow generation_config: sampling only when do_sample is true', () => {
  const contract = readManifest(manifest({ generation: { do_sample: true, top_k: 64, top_p: 0.95 } })).contract;
  expect(samplingFromContract(contract)).toEqual({ temperature: 1, top_k: 64, top_p: 0.95, min_p: 0, seed: -1 });
  const greedy = readManifest(manifest({ generation: { temperature: 0.7 } })).contract;
  expect(samplingFromContract(greedy).temperature).toBe(0);
});

test('cancel() stops the native completion and run() reports the cancellation', async () => {
  const { model } = await load();
  let stop: () => void = () => {};
  const stopped = new Promise<void>((resolve) => { stop = resolve; });
  native.stopCompletion.mockImplementationOnce(async () => stop());
  native.completion.mockImplementationOnce(async (_id: unknown, _params: unknown, onToken: unknown) => {
    (onToken as (t: { token: string }) => void)({ token: 'bil' });
    await stopped; // like the native loop, which ends only when stopCompletion() is called
    return { text: 'bil', interrupted: true, stopped_eos: false, tokens_predicted: 1 };
  });

  const seen: string[] = [];
  const running = model.run('x', '', { onToken: (_t, text) => { seen.push(text); void model.cancel(); } });
  await expect(running).rejects.toMatchObject({ code: 'cancelled' });
  expect(native.stopCompletion).toHaveBeenCalledTimes(1);
  expect(seen).toEqual(['bil']);

  // The model stays usable after a cancellation.
  expect((await model.run('billing')).generation.stoppedBy).toBe('eos');
  await model.release();
});

test('an AbortSignal cancels generate() the same way', async () => {
  const { model } = await load({ task: 'text' });
  const controller = new AbortController();
  native.completion.mockImplementationOnce(async () => {
    controller.abort();
    await Promise.resolve();
    return { text: '', interrupted: true, tokens_predicted: 0 };
  });
  const result = await model.generate('hello', { signal: controller.signal });
  expect(result.stoppedBy).toBe('cancelled');
  expect(native.stopCompletion).toHaveBeenCalledTimes(1);
  await model.release();
});

test('an already aborted signal starts nothing; sampling options override the contract per call', async () => {
  const { model } = await load({ task: 'text' });
  const controller = new AbortController();
  controller.abort();
  expect((await model.generate('hello', { signal: controller.signal })).stoppedBy).toBe('cancelled');
  expect(native.completion).not.toHaveBeenCalled();

  await model.generate('hello', {
    sampling: { temperature: 0.7, seed: 42, top_k: undefined }, maxTokens: 3, stop: ['\n'],
  });
  expect(lastCompletionParams()).toMatchObject({ temperature: 0.7, seed: 42, top_k: 1, n_predict: 3, stop: ['\n'] });
  await model.release();
});

test('a second generation while one runs is refused, not queued silently', async () => {
  const { model } = await load({ task: 'text' });
  let finish: (() => void) | undefined;
  native.completion.mockImplementationOnce(async () => {
    await new Promise<void>((resolve) => { finish = resolve; });
    return { text: 'a', stopped_eos: true, tokens_predicted: 1 };
  });
  const first = model.generate('one');
  await expect(model.generate('two')).rejects.toMatchObject({ code: 'busy' });
  await new Promise((resolve) => setTimeout(resolve, 0));
  finish?.();
  expect((await first).text).toBe('a');
  await model.release();
});

test('release() frees the native context and later calls fail clearly', async () => {
  const { model } = await load();
  await model.release();
  expect(native.releaseContext).toHaveBeenCalledTimes(1);
  await expect(model.run('x')).rejects.toThrow(EdgeModelError);
  await expect(model.run('x')).rejects.toMatchObject({ code: 'released' });
});

test('a GGUF whose BOS flag contradicts the contract is refused at load', async () => {
  native.initContext.mockImplementationOnce(async () => ({
    gpu: false, reasonNoGPU: 'mock', devices: [], systemInfo: 'mock',
    model: { nEmbd: 8, metadata: { 'tokenizer.ggml.add_bos_token': 'false' }, chatTemplates: {} },
  }));
  await expect(load()).rejects.toMatchObject({ code: 'runtime_mismatch' });
  expect(native.releaseContext).toHaveBeenCalledTimes(1);
});

test('a damaged edgepack.json is refused before anything is loaded', async () => {
  const bad = manifest({}) as { model: Record<string, unknown> };
  bad.model.file = '../../etc/passwd';
  const fs = new MemoryFileSystem();
  await expect(EdgeModel.load({ manifest: bad, source: { kind: 'bundled' }, fileSystem: fs })).rejects.toMatchObject({
    code: 'manifest_invalid',
    message: expect.stringContaining('"file" must be a plain file name'),
  });
  expect(native.initContext).not.toHaveBeenCalled();
});

test('a downloaded model is loaded from its verified local name', async () => {
  const fs = new MemoryFileSystem();
  fs.served.set('https://cdn.example/m.gguf', { body: BODY });
  const model = await EdgeModel.load({
    manifest: manifest({}), source: { kind: 'download', url: 'https://cdn.example/m.gguf' }, fileSystem: fs,
  });
  const info = readManifest(manifest({})).model;
  expect(model.modelPath).toBe(`${fs.modelDir}/${localFileName(info)}`);
  expect((native.initContext.mock.calls[0]![1] as { model: string }).model).toBe(model.modelPath);
  await model.release();
});
