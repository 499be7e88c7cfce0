import Foundation

/// The parts of an ios bundle's edgepack.json the bridge reads (written by targets/ios/target.py).
public struct BundleManifest: Decodable, Sendable {
    public struct Package: Decodable, Sendable {
        public let package: String
        public let compression: String
        public let summary: String
    }

    /// The "model" section: Core ML packages, or (a Core AI-only bundle) the .aimodel in `asset`.
    public struct Model: Decodable, Sendable {
        public let name: String
        public let packages: [Package]?
        public let format: String?
        public let asset: String?
        public let inputs: [String]?
        public let maxContext: Int
        public let slidingWindow: Int?

        enum CodingKeys: String, CodingKey {
            case name, packages, format, asset, inputs
            case maxContext = "max_context"
            case slidingWindow = "sliding_window"
        }
    }

    /// The "core_ai" section of a bundle built with --ios-format all: the .aimodel beside the packages.
    public struct CoreAISection: Decodable, Sendable {
        public let asset: String
        public let compression: String
        public let summary: String
        public let minimumOS: String
        public let inputs: [String]

        enum CodingKeys: String, CodingKey {
            case asset, compression, summary, inputs
            case minimumOS = "minimum_os"
        }
    }

    /// One specialist of a fleet bundle: the function of the Core ML package that runs it, and its task contract.
    public struct Specialist: Decodable, Sendable {
        public let name: String
        public let function: String
        public let contract: Contract
    }

    public struct Runner: Decodable, Sendable {
        public let addBos: Bool
        public let bosId: Int?
        public let eosIds: [Int]
        public let maxContext: Int
        public let computeUnits: String

        enum CodingKeys: String, CodingKey {
            case addBos = "add_bos"
            case bosId = "bos_id"
            case eosIds = "eos_ids"
            case maxContext = "max_context"
            case computeUnits = "compute_units"
        }
    }

    public let target: String
    public let model: Model
    public let runner: Runner
    public let contract: Contract
    public let coreAI: CoreAISection?
    /// A fleet bundle's specialists (EdgeFleet); nil for one model.
    public let specialists: [Specialist]?

    enum CodingKeys: String, CodingKey {
        case target, model, runner, contract, specialists
        case coreAI = "core_ai"
    }

    /// The .aimodel this bundle ships (beside Core ML packages or alone), or nil.
    public var coreAIAsset: String? {
        if let section = coreAI { return section.asset }
        return model.format == "aimodel" ? model.asset : nil
    }

    /// The inputs of that .aimodel, or nil.
    public var coreAIInputs: [String]? {
        if let section = coreAI { return section.inputs }
        return model.format == "aimodel" ? model.inputs : nil
    }

    /// The first Core ML package, or nil for a Core AI-only bundle.
    public var coreMLPackage: String? { model.packages?.first?.package }

    /// Read edgepack.json from a bundle folder (or an app's resource folder).
    public static func load(from folder: URL) throws -> BundleManifest {
        let data = try Data(contentsOf: folder.appendingPathComponent("edgepack.json"))
        let manifest = try JSONDecoder().decode(BundleManifest.self, from: data)
        guard manifest.target == "ios" else {
            throw EdgeModelError.wrongBundle("edgepack.json is for target \(manifest.target), not ios")
        }
        return manifest
    }
}
