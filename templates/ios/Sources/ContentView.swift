import CoreML
import EdgeModel
import SwiftUI

/// One screen: pick the compute units (and in a fleet bundle the specialist), type an input, run it under the task
/// contract, see the answer, the speed and which runtime answered (Core AI on iOS 27+ when the bundle ships an
/// .aimodel, else Core ML; a specialist is its function of the fleet's Core ML package).
struct ContentView: View {
    @State private var input = BuildInfo.sampleInput
    @State private var answer = ""
    @State private var status = "Not loaded"
    @State private var speed = ""
    @State private var unitsName = BuildInfo.defaultComputeUnits
    @State private var model: (any ContractModel)?
    @State private var backend = "Not loaded"
    @State private var running: Task<Void, Never>?
    @State private var specialist = BuildInfo.specialists.first ?? ""
    @State private var fleet: EdgeFleet?

    private let unitNames = ["cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all"]

    var body: some View {
        NavigationStack {
            Form {
                Section("Model") {
                    Text(BuildInfo.modelName)
                    Text(BuildInfo.compression).font(.footnote)
                    Text(BuildInfo.runtimeNote).font(.footnote)
                    Picker("Compute units", selection: $unitsName) {
                        ForEach(unitNames, id: \.self) { Text($0) }
                    }
                    .onChange(of: unitsName) {
                        model = nil
                        fleet = nil
                    }
                    if !BuildInfo.specialists.isEmpty {
                        Picker("Specialist", selection: $specialist) {
                            ForEach(BuildInfo.specialists, id: \.self) { Text($0) }
                        }
                        .onChange(of: specialist) {
                            model = nil
                            input = BuildInfo.specialistInputs[specialist] ?? input
                        }
                    }
                    Text(status).font(.footnote)
                }
                Section("Input") {
                    TextField("Input", text: $input, axis: .vertical)
                    if !BuildInfo.labels.isEmpty {
                        Text("Labels: " + BuildInfo.labels.joined(separator: ", ")).font(.footnote)
                    }
                    HStack {
                        Button("Run") { start() }.disabled(running != nil)
                        Button("Cancel") { model?.cancel() }.disabled(running == nil)
                    }
                }
                Section("Answer") {
                    Text(answer).textSelection(.enabled)
                    Text(speed).font(.footnote)
                    Text("Runtime: " + backend).font(.footnote)
                }
            }
            .navigationTitle("edgepack")
        }
    }

    private func start() {
        answer = ""
        speed = ""
        running = Task {
            defer { running = nil }
            do {
                let current = try await loadedModel()
                let instruction = BuildInfo.specialists.isEmpty
                    ? BuildInfo.instruction : BuildInfo.specialistInstructions[specialist] ?? ""
                let result = try await current.run(input: input, instruction: instruction) { piece in
                    Task { @MainActor in answer += piece }
                }
                answer = result.result.ok ? result.result.text : "(\(result.result.errorCode ?? "error")) " + result.result.text
                let rate = result.generation.tokensPerSecond.map { String(format: "%.1f tok/s", $0) } ?? "n/a"
                speed = "\(result.generation.tokens) tokens, \(rate), finish: \(result.generation.finish)"
            } catch {
                status = "Error: \(error)"
            }
        }
    }

    private func loadedModel() async throws -> any ContractModel {
        if let model { return model }
        status = "Loading on \(unitsName)..."
        let started = Date()
        let units = computeUnitsSetting(named: unitsName)
        let loaded: any ContractModel
        if BuildInfo.specialists.isEmpty {
            let chosen = try await EdgeModels.load(from: Bundle.main.resourceURL!, computeUnits: units)
            loaded = chosen.model
            backend = chosen.model.backend.rawValue + ": " + chosen.reason
        } else {
            // A fleet: each specialist is a function of the one package, loaded once and kept by the EdgeFleet.
            let current = try fleet ?? EdgeFleet(from: Bundle.main.resourceURL!, computeUnits: units)
            fleet = current
            loaded = try await current.model(named: specialist)
            backend = loaded.backend.rawValue + ": function " + specialist + " of " + BuildInfo.package
        }
        let seconds = Date().timeIntervalSince(started)
        // Compute units apply to Core ML only; Core AI places the model itself.
        let place = loaded.backend == .coreML ? " on " + unitsName : ""
        status = String(format: "Loaded in %.1f s", seconds) + place
        model = loaded
        return loaded
    }
}
