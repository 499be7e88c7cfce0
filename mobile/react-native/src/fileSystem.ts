/**
 * The only file-system and network operations the bridge needs, behind one small interface.
 *
 * Resume, verification and error handling live in modelFile.ts and are tested with jest against
 * an in-memory implementation; the default implementation for phones (blobUtilFileSystem.ts) only
 * forwards each call to react-native-blob-util.
 */

export interface DownloadRequest {
  url: string;
  /** File the response body is written to. */
  path: string;
  /** true: append the body to the existing file (a resumed download); false: replace it. */
  append: boolean;
  headers: Record<string, string>;
  /** Bytes of this response received so far, and this response's length (-1 when unknown). */
  onProgress?: (received: number, total: number) => void;
}

export interface DownloadResponse {
  /** HTTP status; the body has been written to the file whatever the status. */
  status: number;
}

export interface DownloadTask {
  result: Promise<DownloadResponse>;
  /** Stop the transfer; `result` then rejects. Bytes already written stay in the file. */
  cancel(): void;
}

export interface ModelFileSystem {
  /** A folder that survives app restarts, for downloaded (and on Android, unpacked) models. */
  readonly modelDir: string;
  ensureDir(path: string): Promise<void>;
  exists(path: string): Promise<boolean>;
  /** Size in bytes of an existing file. */
  size(path: string): Promise<number>;
  /** Lowercase hex sha256 of a file's content, computed natively (models are hundreds of MB). */
  sha256(path: string): Promise<string>;
  /** Delete a file; deleting a missing file is not an error. */
  remove(path: string): Promise<void>;
  /** Rename a file, replacing the destination. */
  move(from: string, to: string): Promise<void>;
  /** Cut a file to its first `length` bytes. */
  truncate(path: string, length: number): Promise<void>;
  download(request: DownloadRequest): DownloadTask;
  /** A path llama.rn can open for a file shipped inside the app (iOS bundle), or null. */
  bundledPath(file: string): string | null;
  /** Copy a file shipped inside the app to dest (Android: out of the APK's assets). */
  copyBundled(file: string, dest: string): Promise<void>;
}
