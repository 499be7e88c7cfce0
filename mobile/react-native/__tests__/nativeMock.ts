/**
 * llama.rn's own jest mock, with the native (JSI) functions it will call kept where tests can read
 * what crossed into native code. llama.rn takes over (and deletes) the JSI globals on first use, so
 * the references are taken right after the mock installs them.
 */

import { NativeModules } from 'react-native';

export type NativeMock = jest.Mock<Promise<unknown>, unknown[]>;

export interface Native {
  initContext: NativeMock;
  completion: NativeMock;
  stopCompletion: NativeMock;
  releaseContext: NativeMock;
  applyLoraAdapters: NativeMock;
  removeLoraAdapters: NativeMock;
  clearCache: NativeMock;
}

/** Install the mock's JSI functions (call in beforeAll, after jest.mock('llama.rn', ...)). */
export async function captureNative(): Promise<Native> {
  require('llama.rn'); // the mock registers NativeModules.RNLlama.install
  await (NativeModules.RNLlama as { install: () => Promise<boolean> }).install();
  const jsi = global as unknown as Record<string, NativeMock | undefined>;
  const fn = (name: string): NativeMock => {
    const found = jsi[name];
    if (found === undefined) throw new Error(`llama.rn's jest mock defines no ${name}`);
    return found;
  };
  return {
    initContext: fn('llamaInitContext'),
    completion: fn('llamaCompletion'),
    stopCompletion: fn('llamaStopCompletion'),
    releaseContext: fn('llamaReleaseContext'),
    applyLoraAdapters: fn('llamaApplyLoraAdapters'),
    removeLoraAdapters: fn('llamaRemoveLoraAdapters'),
    clearCache: fn('llamaClearCache'),
  };
}
