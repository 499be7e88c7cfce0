/** edgepack's React Native bridge: one API (load, generate, run, release) over llama.rn; EdgeFleet for specialists. */

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
export { EdgeFleet, type FleetLoadOptions } from './EdgeFleet';
export { EdgeModel, type LoadOptions } from './EdgeModel';
export { EdgeModelError, type EdgeModelErrorCode } from './errors';
export type { DownloadRequest, DownloadResponse, DownloadTask, ModelFileSystem } from './fileSystem';
export {
  completionParams,
  contractConstraint,
  samplingFromContract,
  type GenerateOptions,
  type GenerateResult,
  type RunOptions,
  type RunResult,
  type Sampling,
  type SessionOptions,
  type StopReason,
} from './llamaSession';
export { readManifest, type EdgepackManifest, type ModelInfo, type ShippedFile, type SpecialistInfo } from './manifest';
export {
  fleetFileSource,
  localFileName,
  resolveModelFile,
  type FleetSource,
  type LoadProgress,
  type ModelSource,
} from './modelFile';
