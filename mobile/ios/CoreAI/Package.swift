// swift-tools-version:5.10
// EdgeModel with its Core AI path: the Package.swift of a bundle that ships an .aimodel (edgepack copies it over
// ../Package.swift). Apple's coreai-models declares iOS 27 / macOS 27, and SwiftPM does not let a package depend on
// a product whose minimum platform is above its own, so this manifest declares iOS 27 / macOS 27 too. An app
// that must also run on iOS 18-26 links the Core ML-only manifest (../Package.swift) instead.
import PackageDescription

let package = Package(
    name: "EdgeModel",
    platforms: [.iOS("27.0"), .macOS("27.0")],
    products: [
        .library(name: "EdgeModel", targets: ["EdgeModel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/huggingface/swift-transformers", .upToNextMinor(from: "1.1.0")),
        .package(url: "https://github.com/apple/coreai-models", .upToNextMinor(from: "1.0.0")),
    ],
    targets: [
        .target(
            name: "EdgeModel",
            dependencies: [
                .product(name: "Tokenizers", package: "swift-transformers"),
                .product(name: "CoreAILM", package: "coreai-models"),
            ]
        ),
    ]
)
