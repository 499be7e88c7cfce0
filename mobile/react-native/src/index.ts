/** edgepack's React Native bridge: one API (load, generate, run, release) over llama.rn. */

export { createBlobUtilFileSystem, type BlobUtilFileSystemOptions } from './blobUtilFileSystem';
export {
  cleanOutput,
  contractFromJson,
  fillTemplate,
  labelsGrammar,
  parseOutput,
  renderPrompt,
  schemaViolation,
  type Contract,
  type JsonObject,
  type JsonValue,
  type ParseError,
  type ParseResult,
  type PromptFormat,
} from './contract';
export {
  EdgeModel,
  completionParams,
  contractConstraint,
  samplingFromContract,
  type GenerateOptions,
  type GenerateResult,
  type LoadOptions,
  type RunResult,
  type Sampling,
  type StopReason,
} from './EdgeModel';
export { EdgeModelError, type EdgeModelErrorCode } from './errors';
export type { DownloadRequest, DownloadResponse, DownloadTask, ModelFileSystem } from './fileSystem';
export { readManifest, type EdgepackManifest, type ModelInfo } from './manifest';
export { localFileName, resolveModelFile, type LoadProgress, type ModelSource } from './modelFile';
