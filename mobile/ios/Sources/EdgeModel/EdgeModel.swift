import CoreML
import Foundation
import Tokenizers

/// Why a bundle cannot be used.
public enum EdgeModelError: Error {
    case wrongBundle(String)
    case missingOutput(String)
    case contextFull(Int)
    case unknownSpecialist(String)
}

/// One generation: the raw text, how it ended, and how fast it decoded.
public struct Generation: Sendable {
    public let text: String
    public let tokens: Int
    public let tokensPerSecond: Double?
    /// "eos", "stop_string", "max_new_tokens", "cancelled" or "context_full"
    public let finish: String
}

/// An answer under the task contract: the parsed result plus the generation behind it.
public struct Answer: Sendable {
    public let result: ParseResult
    public let generation: Generation
}

/// Map edgepack.json's compute-units name to Core ML's setting (unknown names fall back to .all).
public func computeUnitsSetting(named name: String) -> MLComputeUnits {
    switch name {
    case "cpuOnly": return .cpuOnly
    case "cpuAndGPU": return .cpuAndGPU
    case "cpuAndNeuralEngine": return .cpuAndNeuralEngine
    default: return .all
    }
}

/// The model of one edgepack ios bundle: a stateful Core ML program, its tokenizer and its task contract; in a
/// fleet bundle, one specialist: one function of the bundle's multifunction package under its own contract (EdgeFleet).
///
/// Each call is a fresh single-turn prompt: a new MLState, a prefill of the whole prompt, then one token
/// per prediction through the state (keyCache/valueCache). One call at a time; cancel() from any thread.
/// EdgeModels.load picks this or CoreAIModel; load this one directly to insist on Core ML.
public final class EdgeModel: ContractModel, @unchecked Sendable {
    public let manifest: BundleManifest
    public let backend = Backend.coreML
    public let computeUnits: MLComputeUnits
    private let model: MLModel
    private let tokenizer: Tokenizer
    private let cancelFlag = CancelFlag()
    /// The bundle's contract, or in a fleet bundle the specialist's.
    public let contract: Contract
    /// A constrained labels contract's token paths: each token is then the best one on them, not the argmax.
    private let labelChoice: LabelChoice?

    /// Load the bundle in `folder`: edgepack.json, the tokenizer files and the model (a compiled .mlmodelc,
    /// as Xcode puts it in an app, or an .mlpackage compiled here on first use).
    public static func load(from folder: URL, computeUnits: MLComputeUnits? = nil) async throws -> EdgeModel {
        try await load(from: folder, manifest: try BundleManifest.load(from: folder), computeUnits: computeUnits,
                       specialist: nil)
    }

    /// Load one specialist of a fleet bundle: its function of the package (MLModelConfiguration.functionName,
    /// iOS 18) under its own contract. EdgeFleet.model(named:) calls this.
    static func load(from folder: URL, manifest: BundleManifest, computeUnits: MLComputeUnits?,
                     specialist: BundleManifest.Specialist?) async throws -> EdgeModel {
        let units = computeUnits ?? EdgeModel.defaultUnits(manifest)
        let configuration = MLModelConfiguration()
        configuration.computeUnits = units
        configuration.functionName = specialist?.function
        let model = try MLModel(contentsOf: try await compiledModelURL(folder: folder, manifest: manifest),
                                configuration: configuration)
        let tokenizer = try await AutoTokenizer.from(modelFolder: folder)
        return EdgeModel(manifest: manifest, contract: specialist?.contract ?? manifest.contract, model: model,
                         tokenizer: tokenizer, computeUnits: units)
    }

    private static func defaultUnits(_ manifest: BundleManifest) -> MLComputeUnits {
        computeUnitsSetting(named: manifest.runner.computeUnits)
    }

    private static func compiledModelURL(folder: URL, manifest: BundleManifest) async throws -> URL {
        guard let name = manifest.coreMLPackage else {
            throw EdgeModelError.wrongBundle("edgepack.json lists no Core ML package (a Core AI-only bundle); "
                + "build with --ios-format all or coreml for iOS 18-26")
        }
        let stem = (name as NSString).deletingPathExtension
        let compiled = folder.appendingPathComponent(stem + ".mlmodelc")
        if FileManager.default.fileExists(atPath: compiled.path) {
            return compiled
        }
        return try await MLModel.compileModel(at: folder.appendingPathComponent(name))
    }

    private init(manifest: BundleManifest, contract: Contract, model: MLModel, tokenizer: Tokenizer,
                 computeUnits: MLComputeUnits) {
        self.manifest = manifest
        self.contract = contract
        self.model = model
        self.tokenizer = tokenizer
        self.computeUnits = computeUnits
        self.labelChoice = LabelChoice(contract: contract, tokenizer: tokenizer)
    }

    /// Stop the running generation; it returns what it has, with finish = "cancelled".
    public func cancel() {
        cancelFlag.raise()
    }

    /// Render the contract's prompt for `input`, generate, and parse the answer under the contract.
    public func run(input: String, instruction: String = "", onToken: (String) -> Void = { _ in }) async throws -> Answer {
        let prompt = try renderPrompt(contract, input: input, instruction: instruction)
        let generation = try await generate(prompt: prompt, maxNewTokens: contract.maxNewTokens, onToken: onToken)
        return Answer(result: parseOutput(contract, raw: generation.text), generation: generation)
    }

    /// Greedy generation from an already-rendered prompt, streaming each new piece of text to onToken.
    public func generate(prompt: String, maxNewTokens: Int, onToken: (String) -> Void = { _ in }) async throws
        -> Generation
    {
        cancelFlag.reset()
        var ids = tokenizer.encode(text: prompt, addSpecialTokens: false)
        // BOS and stop ids from the contract (a fleet's specialist's own): edgepack.json's runner repeats a single
        // model's, and the build verified each specialist with its own.
        if contract.addBos, let bos = contract.bosId {
            ids.insert(bos, at: 0)
        }
        let limit = manifest.runner.maxContext
        guard ids.count < limit else { throw EdgeModelError.contextFull(limit) }
        let state = model.makeState()
        var next = try await predictNext(ids, total: ids.count, state: state, answer: [])
        var generated: [Int] = []
        var text = ""
        var finish = "context_full"
        let start = Date()
        while ids.count + generated.count < limit {
            if contract.eosIds.contains(next) {
                finish = "eos"
                break
            }
            generated.append(next)
            let decoded = tokenizer.decode(tokens: generated)
            let stop = streamedStep(from: text, to: decoded, contract: contract, cancel: cancelFlag, onToken: onToken)
            text = decoded
            if let stop {
                finish = stop
                break
            }
            if generated.count >= maxNewTokens {
                finish = "max_new_tokens"
                break
            }
            next = try await predictNext([next], total: ids.count + generated.count, state: state, answer: generated)
        }
        let seconds = Date().timeIntervalSince(start)
        let speed = seconds > 0 && generated.count > 1 ? Double(generated.count - 1) / seconds : nil
        return Generation(text: text, tokens: generated.count, tokensPerSecond: speed, finish: finish)
    }

    /// Run `chunk` (the last `chunk.count` of `total` positions) through the model and return the next id after
    /// `answer` (the tokens generated so far): the argmax, or under a labels contract the best id on its paths.
    private func predictNext(_ chunk: [Int], total: Int, state: MLState, answer: [Int]) async throws -> Int {
        let inputIds = try MLMultiArray(shape: [1, NSNumber(value: chunk.count)], dataType: .int32)
        for (index, id) in chunk.enumerated() {
            inputIds[[0, NSNumber(value: index)]] = NSNumber(value: id)
        }
        var features: [String: MLFeatureValue] = [
            "inputIds": MLFeatureValue(multiArray: inputIds),
            "fullAttentionMask": MLFeatureValue(multiArray: try AttentionMasks.make(
                query: chunk.count, total: total, slidingWindow: nil)),
        ]
        if let window = manifest.model.slidingWindow {
            features["slidingAttentionMask"] = MLFeatureValue(multiArray: try AttentionMasks.make(
                query: chunk.count, total: total, slidingWindow: window))
        }
        let provider = try MLDictionaryFeatureProvider(dictionary: features)
        let output = try await model.prediction(from: provider, using: state)
        guard let logits = output.featureValue(for: "logits")?.multiArrayValue else {
            throw EdgeModelError.missingOutput("logits")
        }
        return labelChoice?.best(logits, after: answer) ?? Self.argmaxOfLastRow(logits)
    }

    /// The index of the largest logit at the last position of a [1, seq, vocab] float16 array.
    static func argmaxOfLastRow(_ logits: MLMultiArray) -> Int {
        let seq = logits.shape[1].intValue
        let vocab = logits.shape[2].intValue
        return logits.withUnsafeBufferPointer(ofType: Float16.self) { buffer in
            let rowStride = logits.strides[1].intValue
            let colStride = logits.strides[2].intValue
            let base = (seq - 1) * rowStride
            var best = 0
            var bestValue = -Float16.infinity
            for index in 0..<vocab where buffer[base + index * colStride] > bestValue {
                bestValue = buffer[base + index * colStride]
                best = index
            }
            return best
        }
    }
}
