// swift-tools-version:5.10
// EdgeModel: the iOS side of an edgepack bundle. Core ML runs the stateful .mlpackage, swift-transformers'
// Tokenizers reads tokenizer.json, and the task contract in edgepack.json renders prompts and parses answers.
import PackageDescription

let package = Package(
    name: "EdgeModel",
    platforms: [.iOS(.v18), .macOS(.v15)],
    products: [
        .library(name: "EdgeModel", targets: ["EdgeModel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/huggingface/swift-transformers", .upToNextMinor(from: "1.0.0")),
    ],
    targets: [
        .target(
            name: "EdgeModel",
            dependencies: [.product(name: "Tokenizers", package: "swift-transformers")]
        ),
    ]
)
