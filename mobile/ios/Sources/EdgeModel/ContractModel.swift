import CoreML
import Foundation

/// The runtime that answered.
public enum Backend: String, Sendable {
    case coreML = "Core ML"
    case coreAI = "Core AI"
}

/// One model under its task contract, whichever runtime runs it: what the app calls.
public protocol ContractModel: AnyObject, Sendable {
    var backend: Backend { get }
    var manifest: BundleManifest { get }
    /// Render the contract's prompt for `input`, generate, and parse the answer under the contract.
    func run(input: String, instruction: String, onToken: (String) -> Void) async throws -> Answer
    /// Stop the running generation; it returns what it has, with finish = "cancelled".
    func cancel()
}

/// A loaded model and, in words, why its runtime was chosen (shown by the sample app).
public struct LoadedModel: Sendable {
    public let model: any ContractModel
    public let reason: String
}

/// The one entry point: load a bundle with the runtime this OS, this app and this bundle allow.
public enum EdgeModels {
    /// The inputs, in order, of a model the inference engines of Apple's coreai-models 1.0 drive (the "Model
    /// Contract" of its CoreAISequentialEngine; its pipelined engine reads the same two, by position).
    public static let coreAILanguageModelInputs = ["input_ids", "position_ids"]

    /// Core AI (iOS 27 / macOS 27) when the bundle ships an .aimodel with the inputs Apple's engines drive and
    /// the app links Apple's CoreAILM product; otherwise, or when Core AI fails to load the model, the bundle's
    /// Core ML package. edgepack's .aimodel has those inputs; one with other inputs (built before it had them:
    /// inputIds and attention masks) is not handed to Core AI: its engines read inputs by position, so a mask
    /// would be taken for positions and the answers would be wrong, not refused.
    public static func load(from folder: URL, computeUnits: MLComputeUnits? = nil) async throws -> LoadedModel {
        let manifest = try BundleManifest.load(from: folder)
        var reason = "the bundle ships no .aimodel"
        if let asset = manifest.coreAIAsset, let inputs = manifest.coreAIInputs, inputs != coreAILanguageModelInputs {
            reason = "\(asset) takes \(inputs.joined(separator: ", ")), not the "
                + "\(coreAILanguageModelInputs.joined(separator: ", ")) Apple's Core AI language-model engines drive"
        } else if let asset = manifest.coreAIAsset {
            if #available(iOS 27, macOS 27, *) {
                #if canImport(CoreAILanguageModels) && canImport(FoundationModels)
                do {
                    let model = try await CoreAIModel.load(from: folder)
                    return LoadedModel(model: model, reason: "\(asset) through Foundation Models (iOS 27+)")
                } catch {
                    reason = "Core AI could not load \(asset): \(error)"
                }
                #else
                reason = "this app was built without Apple's CoreAILM package, which runs \(asset)"
                #endif
            } else {
                reason = "\(asset) needs iOS 27 / macOS 27"
            }
        }
        guard let package = manifest.coreMLPackage else {
            throw EdgeModelError.wrongBundle(
                "\(reason); the bundle has no Core ML package for this device (build with --ios-format all)")
        }
        let model = try await EdgeModel.load(from: folder, computeUnits: computeUnits)
        return LoadedModel(model: model, reason: "\(package) (\(reason))")
    }
}

/// A cancel request another thread may raise while a generation runs (cancel() from any thread).
final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = false

    func raise() {
        lock.lock()
        raised = true
        lock.unlock()
    }

    /// Clear it for a new generation.
    func reset() {
        lock.lock()
        raised = false
        lock.unlock()
    }

    /// Raised by cancel() since the last reset, or the calling task was cancelled.
    var isRaised: Bool {
        lock.lock()
        defer { lock.unlock() }
        return raised || Task.isCancelled
    }
}

/// One more step of a streamed answer, as both runtimes take it: hand `onToken` the text `current` adds to
/// `previous`, then return why generation stops here ("cancelled" or "stop_string"), or nil to go on.
func streamedStep(from previous: String, to current: String, contract: Contract, cancel: CancelFlag,
                  onToken: (String) -> Void) -> String? {
    if current.count > previous.count, current.hasPrefix(previous) {
        onToken(String(current.dropFirst(previous.count)))
    }
    if cancel.isRaised {
        return "cancelled"
    }
    if contract.stopStrings.contains(where: { !$0.isEmpty && current.contains($0) }) {
        return "stop_string"
    }
    return nil
}
