/** One error type with a machine-readable code, so an app can branch without parsing messages. */

export type EdgeModelErrorCode =
  | 'manifest_invalid'
  | 'download_failed'
  | 'size_mismatch'
  | 'hash_mismatch'
  | 'runtime_mismatch'
  | 'cancelled'
  | 'busy'
  | 'released'
  | 'unknown_specialist'
  | 'adapter_failed';

export class EdgeModelError extends Error {
  readonly code: EdgeModelErrorCode;

  constructor(code: EdgeModelErrorCode, message: string) {
    super(message);
    this.name = 'EdgeModelError';
    this.code = code;
  }
}
