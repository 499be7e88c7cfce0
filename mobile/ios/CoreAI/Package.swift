// swift-tools-version:5.10
// EdgeModel with its Core AI path: edgepack ships this as EdgeModel/Package.swift in a bundle with an .aimodel.
// Apple's coreai-models declares iOS 27 / macOS 27, and SwiftPM does not let a package depend on a product whose
// minimum platform is above its own, so this manifest declares iOS 27 / macOS 27 too. An app that must also run
// on iOS 18-26 needs a bundle built with --ios-format coreml, whose manifest (mobile/ios/Package.swift) has no
// Core AI dependency.
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
