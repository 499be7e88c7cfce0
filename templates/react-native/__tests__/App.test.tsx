/**
 * The sample app end to end, with llama.rn's own jest mock standing in for the native runtime:
 * the GGUF edgepack wrote next to this app is checked against edgepack.json (size and sha256),
 * then the app loads it, runs the contract's prompt, streams the answer and shows the latency.
 * For a fleet, the picker switches specialists: the adapter calls reach llama.rn's native layer.
 */

import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

import React from 'react';
import { NativeModules } from 'react-native';
import ReactTestRenderer, { act, type ReactTestInstance } from 'react-test-renderer';

import App from '../App';
import manifestJson from '../edgepack.json';
import { LABELS, MODEL_FILE, MODEL_NAME, SPECIALISTS } from '../src/buildInfo';
import { readManifest, renderPrompt, type ModelFileSystem } from '../src/edgepack';

jest.mock('llama.rn', () => require('llama.rn/jest/mock'));
// react-native-blob-util needs its native module as soon as it is imported; these tests pass their
// own file system (hostFileSystem below), so the default one is never created.
jest.mock('react-native-blob-util', () => ({ __esModule: true, default: {} }));

type NativeMock = jest.Mock<Promise<unknown>, unknown[]>;
let nativeInit: NativeMock;
let nativeCompletion: NativeMock;
let nativeApplyAdapters: NativeMock;

beforeAll(async () => {
  require('llama.rn'); // the mock registers NativeModules.RNLlama.install
  // llama.rn takes over (and deletes) the JSI globals on first use: keep the functions it will call.
  await (NativeModules.RNLlama as { install: () => Promise<boolean> }).install();
  nativeInit = global.llamaInitContext as unknown as NativeMock;
  nativeCompletion = global.llamaCompletion as unknown as NativeMock;
  nativeApplyAdapters = global.llamaApplyLoraAdapters as unknown as NativeMock;
});

beforeEach(() => {
  [nativeInit, nativeCompletion, nativeApplyAdapters].forEach((fn) => fn.mockClear());
});

const manifest = readManifest(manifestJson);
// edgepack writes the GGUF (and a fleet's adapters) beside this app folder (dist/<name>/react-native/).
const modelPath = process.env.EDGEPACK_MODEL_PATH ?? resolve(__dirname, '..', '..', manifest.model.file);
const shippedPaths = new Map<string, string>([
  [manifest.model.file, modelPath],
  ...manifest.specialists.map((s): [string, string] => [s.lora_adapter, resolve(dirname(modelPath), s.lora_adapter)]),
]);
// The contract a run answers under before anything is picked: the first specialist's, else the model's.
const firstContract = manifest.specialists[0]?.contract ?? manifest.contract;

/** The model "bundled" at its real path; hashes are computed for real (a tiny model is quick to hash). */
function hostFileSystem(): ModelFileSystem {
  const unused = async (): Promise<never> => {
    throw new Error('not used by a bundled model');
  };
  return {
    modelDir: '/unused',
    ensureDir: unused,
    exists: async (path) => existsSync(path),
    size: async (path) => statSync(path).size,
    sha256: async (path) => createHash('sha256').update(readFileSync(path)).digest('hex'),
    remove: unused,
    move: unused,
    truncate: unused,
    download: () => ({ result: unused(), cancel: () => undefined }),
    bundledPath: (file) => shippedPaths.get(file) ?? null,
    copyBundled: unused,
  };
}

// A Pressable passes its testID on to the view it renders: take the outermost.
const byId = (root: ReactTestRenderer.ReactTestRenderer, id: string): ReactTestInstance =>
  root.root.findAllByProps({ testID: id })[0] ?? root.root.findByProps({ testID: id });
const textOf = (node: ReactTestInstance): string => (node.props.children as string[] | string).toString();

async function waitFor(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i += 1) {
    await act(() => new Promise((done) => setTimeout(done, 5)));
  }
  expect(check()).toBe(true);
}

test('the build info and edgepack.json describe the same model', () => {
  expect(MODEL_FILE).toBe(manifest.model.file);
  expect(MODEL_NAME).toBe(manifest.model.name);
  expect([...LABELS]).toEqual(manifest.contract.labels ?? []);
  expect([...SPECIALISTS]).toEqual(manifest.specialists.map((s) => s.name));
});

const modelTest = existsSync(modelPath) ? test : test.skip;
const fleetTest = manifest.specialists.length > 0 && [...shippedPaths.values()].every((p) => existsSync(p))
  ? test : test.skip;

fleetTest('every adapter next to the app matches edgepack.json', () => {
  for (const s of manifest.specialists) {
    const path = shippedPaths.get(s.lora_adapter)!;
    expect(statSync(path).size).toBe(s.bytes);
    expect(createHash('sha256').update(readFileSync(path)).digest('hex')).toBe(s.sha256);
  }
});

modelTest('the GGUF next to the app matches edgepack.json', () => {
  expect(statSync(modelPath).size).toBe(manifest.model.bytes);
  expect(createHash('sha256').update(readFileSync(modelPath)).digest('hex')).toBe(manifest.model.sha256);
});

modelTest('run loads the verified model, streams the answer and reports latency', async () => {
  let root!: ReactTestRenderer.ReactTestRenderer;
  await act(async () => {
    root = ReactTestRenderer.create(<App fileSystem={hostFileSystem()} />);
  });
  expect(textOf(byId(root, 'model-name'))).toBe(MODEL_NAME);
  (firstContract.labels ?? []).forEach((label, index) => expect(textOf(byId(root, `label-${index}`))).toBe(label));
  // One model: no picker.
  expect(root.root.findAllByProps({ testID: 'specialist-picker' }).length > 0).toBe(manifest.specialists.length > 0);

  await act(async () => byId(root, 'input').props.onChangeText('my card got declined'));
  await act(async () => byId(root, 'run').props.onPress());
  await waitFor(() => root.root.findAllByProps({ testID: 'latency' }).length > 0);

  // llama.rn's mock streams " *giggles*" and stops on eos.
  expect(textOf(byId(root, 'streamed'))).toBe(' *giggles*');
  expect(textOf(byId(root, 'status'))).toBe('Done (eos)');
  expect(textOf(byId(root, 'latency'))).toMatch(/^\d+ ms total, first token after \d+ ms, 6 tokens/);
  const expected = firstContract.task === 'labels' ? 'Not one of the labels: "*giggles*"' : null;
  if (expected !== null) expect(textOf(byId(root, 'result'))).toBe(expected);

  // What crossed into the native layer: the contract's prompt, stops and the build's context length.
  expect(nativeInit.mock.calls[0]![1]).toMatchObject({ model: modelPath, n_ctx: manifest.model.context_length });
  const params = nativeCompletion.mock.calls[0]![1] as { prompt: string; stop: string[]; n_predict: number };
  expect(params.prompt).toBe(renderPrompt(firstContract, 'my card got declined', ''));
  expect(params.stop).toEqual(firstContract.stop_strings);
  expect(params.n_predict).toBe(firstContract.max_new_tokens);
  await act(async () => root.unmount());
});

fleetTest('the picker switches specialists: one base, each run with its adapter and contract', async () => {
  let root!: ReactTestRenderer.ReactTestRenderer;
  await act(async () => {
    root = ReactTestRenderer.create(<App fileSystem={hostFileSystem()} />);
  });
  // Every specialist in turn, then the first again.
  const order = [...manifest.specialists, manifest.specialists[0]!];
  for (const [index, specialist] of order.entries()) {
    await act(async () => byId(root, `specialist-${specialist.name}`).props.onPress());
    expect(byId(root, `specialist-${specialist.name}`).props.accessibilityState).toMatchObject({ selected: true });
    (specialist.contract.labels ?? []).forEach((label, i) => expect(textOf(byId(root, `label-${i}`))).toBe(label));
    await act(async () => byId(root, 'input').props.onChangeText(`question for ${specialist.name}`));
    await act(async () => byId(root, 'run').props.onPress());
    await waitFor(() => nativeCompletion.mock.calls.length === index + 1 &&
      textOf(byId(root, 'status')) === 'Done (eos)');

    // What crossed into the native layer: this specialist's adapter (alone, at scale 1), then its prompt.
    const applied = nativeApplyAdapters.mock.calls.at(-1)![1];
    expect(applied).toEqual([{ path: shippedPaths.get(specialist.lora_adapter), scaled: 1 }]);
    const params = nativeCompletion.mock.calls.at(-1)![1] as { prompt: string; stop: string[]; n_predict: number };
    expect(params.prompt).toBe(renderPrompt(specialist.contract, `question for ${specialist.name}`, ''));
    expect(params.stop).toEqual(specialist.contract.stop_strings);
    expect(params.n_predict).toBe(specialist.contract.max_new_tokens);
  }
  expect(nativeInit).toHaveBeenCalledTimes(1);
  expect((nativeInit.mock.calls[0]![1] as { model: string }).model).toBe(modelPath);
  await act(async () => root.unmount());
});
