// swift-tools-version:6.0
import PackageDescription

// One settings array for every target: Swift 6 language mode (the tools version's default) and warnings kept at zero.
let common: [SwiftSetting] = []
// The data path (RespoolCore's rings, EventLoop, Respool) runs single-threaded on one event loop: dynamic exclusivity
// checks cost ~20% of its instructions (docs/ARCHITECTURE.md, "Measured facts") and buy nothing there.
let hot: [SwiftSetting] = common + [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "respool",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "respool", targets: ["respool"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        .systemLibrary(name: "CLibevent", pkgConfig: "libevent", providers: [.apt(["libevent-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .target(name: "RESP", swiftSettings: hot),
        .target(
            name: "RespoolCore",
            dependencies: ["RESP", .product(name: "Histogram", package: "hdrhistogram-swift")],
            swiftSettings: hot
        ),
        .target(name: "EventLoop", dependencies: ["CLibevent", "COpenSSL"], swiftSettings: hot),
        .target(
            name: "Respool",
            dependencies: ["RESP", "RespoolCore", "EventLoop", .product(name: "Logging", package: "swift-log")],
            swiftSettings: hot
        ),
        .executableTarget(
            name: "respool",
            dependencies: [
                "Respool", "RespoolCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: common
        ),
        // What the test targets share (a seeded generator).
        .target(name: "TestKit", path: "Tests/TestKit", swiftSettings: common),
        // The fuzz oracle (reference decoders and checks): scripts/fuzz's libFuzzer build and RESPTests' corpus replay.
        .target(name: "FuzzOracle", dependencies: ["RESP"], path: "Tests/FuzzOracle", swiftSettings: common),
        .testTarget(name: "RESPTests", dependencies: ["RESP", "TestKit", "FuzzOracle"], swiftSettings: common),
        .testTarget(name: "RespoolCoreTests", dependencies: ["RespoolCore", "RESP", "TestKit"], swiftSettings: common),
        .testTarget(name: "IntegrationTests", dependencies: ["RESP", "respool", "TestKit"], swiftSettings: common),
    ]
)
