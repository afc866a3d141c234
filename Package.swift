// swift-tools-version:6.0
// SwiftUNet: a diffusion U-Net with its own CPU kernels.
//
// By default every target is compiled for the CPU of the machine that builds
// it (`-target-cpu native`), which is what lets the SIMD16 kernels become
// AVX-512 code. Set SWIFTUNET_PORTABLE=1 while building to get a library that
// runs on any x86-64 (or arm64) CPU instead; it is slower but passes every test.
import PackageDescription

let portable = (Context.environment["SWIFTUNET_PORTABLE"] ?? "0") != "0"
let isaFlags: [String] = portable ? [] : ["-target-cpu", "native"]
let computeSettings: [SwiftSetting] = [
    .unsafeFlags(isaFlags),
    .define(portable ? "SWIFTUNET_PORTABLE" : "SWIFTUNET_NATIVE"),
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
]

let package = Package(
    name: "SwiftUNet",
    products: [
        .library(name: "SwiftUNet", targets: ["SwiftUNet"]),
        .library(name: "SwiftUNetC", type: .dynamic, targets: ["SwiftUNetC"]),
        .executable(name: "SwiftUNetBench", targets: ["SwiftUNetBench"]),
    ],
    targets: [
        // A C prefetch hint: the one instruction the kernels need that Swift cannot spell.
        .target(name: "SwiftUNetSupport"),
        .target(name: "SwiftUNet", dependencies: ["SwiftUNetSupport"], swiftSettings: computeSettings),
        .target(
            name: "SwiftUNetC",
            dependencies: ["SwiftUNet"],
            exclude: ["include"],
            swiftSettings: computeSettings
        ),
        .executableTarget(name: "SwiftUNetBench", dependencies: ["SwiftUNet"], swiftSettings: computeSettings),
        .testTarget(
            name: "SwiftUNetTests",
            dependencies: ["SwiftUNet"],
            swiftSettings: [.unsafeFlags(isaFlags)]
        ),
    ],
    swiftLanguageModes: [.v5]
)
