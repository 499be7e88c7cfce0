import CoreML
import Foundation

/// A fleet bundle: LoRA specialists of one base, each a function of one multifunction Core ML package whose base
/// weights are stored once (edgepack.json's `specialists`: name, function, contract).
///
/// `model(named:)` loads a specialist's function with `MLModelConfiguration.functionName` (iOS 18) the first time
/// it is asked for, and returns the same EdgeModel afterwards; each answers under its own contract. A specialist
/// loaded is a Core ML model of its own: whether Core ML shares the base's weights in memory between two loaded
/// functions was not measured (edgepack simulated each function on Linux; no device ran).
public actor EdgeFleet {
    public let manifest: BundleManifest
    private let folder: URL
    private let computeUnits: MLComputeUnits?
    private var loaded: [String: EdgeModel] = [:]

    /// The specialists' names, in the order edgepack.json lists them.
    public nonisolated var names: [String] { manifest.specialists?.map { $0.name } ?? [] }

    /// Read a fleet bundle's edgepack.json in `folder`; nothing is loaded until a specialist is asked for.
    public init(from folder: URL, computeUnits: MLComputeUnits? = nil) throws {
        let manifest = try BundleManifest.load(from: folder)
        guard let specialists = manifest.specialists, !specialists.isEmpty else {
            throw EdgeModelError.wrongBundle("edgepack.json lists no specialists: a single model, load it with "
                + "EdgeModels.load")
        }
        self.manifest = manifest
        self.folder = folder
        self.computeUnits = computeUnits
    }

    /// The specialist `name`: its function of the package under its own contract, loaded on first use.
    public func model(named name: String) async throws -> EdgeModel {
        if let model = loaded[name] {
            return model
        }
        guard let specialist = manifest.specialists?.first(where: { $0.name == name }) else {
            throw EdgeModelError.unknownSpecialist(name)
        }
        let model = try await EdgeModel.load(from: folder, manifest: manifest, computeUnits: computeUnits,
                                             specialist: specialist)
        loaded[name] = model
        return model
    }

    /// Release a loaded specialist (the next model(named:) loads it again).
    public func unload(named name: String) {
        loaded[name] = nil
    }
}
