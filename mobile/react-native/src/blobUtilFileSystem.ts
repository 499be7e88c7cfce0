/**
 * The default ModelFileSystem on a phone: each method forwards to react-native-blob-util 0.25.1.
 *
 * Chosen because it can append a response to an existing file (config `overwrite: false`), which
 * makes an HTTP Range resume a plain download, and hashes files natively (`fs.hash(path,
 * 'sha256')`). Everything that decides anything lives in modelFile.ts, where jest tests it.
 */

import { Platform } from 'react-native';
import ReactNativeBlobUtil from 'react-native-blob-util';

import type { DownloadRequest, DownloadTask, ModelFileSystem } from './fileSystem';

export interface BlobUtilFileSystemOptions {
  /** Where downloaded models are kept (default: <Documents>/edgepack-models). */
  modelDir?: string;
  /** Minimum milliseconds between download progress callbacks. */
  progressIntervalMs?: number;
}

/** Return the ModelFileSystem backed by react-native-blob-util. */
export function createBlobUtilFileSystem(options: BlobUtilFileSystemOptions = {}): ModelFileSystem {
  const fs = ReactNativeBlobUtil.fs;
  const modelDir = options.modelDir ?? `${fs.dirs.DocumentDir}/edgepack-models`;

  const remove = async (path: string): Promise<void> => {
    if (await fs.exists(path)) await fs.unlink(path);
  };

  return {
    modelDir,
    ensureDir: async (path) => {
      if (!(await fs.isDir(path))) await fs.mkdir(path);
    },
    exists: (path) => fs.exists(path),
    size: async (path) => Number((await fs.stat(path)).size),
    sha256: (path) => fs.hash(path, 'sha256'),
    remove,
    move: async (from, to) => {
      await remove(to);
      await fs.mv(from, to);
    },
    truncate: async (path, length) => {
      const copy = `${path}.truncated`;
      await fs.slice(path, copy, 0, length);
      await fs.unlink(path);
      await fs.mv(copy, path);
    },
    download: (request: DownloadRequest): DownloadTask => {
      const task = ReactNativeBlobUtil.config({ path: request.path, overwrite: !request.append }).fetch(
        'GET', request.url, request.headers,
      );
      const onProgress = request.onProgress;
      if (onProgress) {
        task.progress({ interval: options.progressIntervalMs ?? 250 }, (received, total) =>
          onProgress(Number(received), Number(total)),
        );
      }
      return {
        result: task.then((response) => ({ status: response.info().status })),
        cancel: () => {
          task.cancel();
        },
      };
    },
    bundledPath: (file) => (Platform.OS === 'ios' ? `${fs.dirs.MainBundleDir}/${file}` : null),
    copyBundled: async (file, dest) => {
      await fs.cp(fs.asset(file), dest);
    },
  };
}
