// swift-tools-version:6.0
// SwiftUNet: a diffusion U-Net with its own CPU kernels.
//
// Kernel variants. SWIFTUNET_VARIANT (read while building) picks the instruction set the
// library is compiled for, and with it the kernels' register blocks (GemmKernels.swift):
//   native   (default) this machine's CPU (`-target-cpu native`); the kernels are the
//            AVX-512 ones when /proc/cpuinfo lists avx512f, the narrow ones otherwise
//   avx512   skylake-avx512: AVX-512F/CD/BW/DQ/VL with the AVX2/FMA/BMI2 set
//   avx2     haswell: AVX2, FMA, BMI1/2, F16C, MOVBE, LZCNT; no AVX-512
//   baseline plain x86-64 (SSE2) on x86_64, or plain arm64 (NEON) on arm64: runs on any CPU
//            of the architecture
// SWIFTUNET_PORTABLE=1, the older spelling, means baseline. A library built for one variant
// executes instructions of that variant only; swiftunet's Python package can carry several
// and load the best one the CPU runs (python/swiftunet/_variants.py).
import Foundation
import PackageDescription

let variantNames = ["native", "avx512", "avx2", "baseline"]
let legacyPortable = (Context.environment["SWIFTUNET_PORTABLE"] ?? "0") != "0"
let requestedVariant = Context.environment["SWIFTUNET_VARIANT"] ?? (legacyPortable ? "baseline" : "native")
guard variantNames.contains(requestedVariant) else {
    fatalError("SWIFTUNET_VARIANT must be one of \(variantNames.joined(separator: ", ")), got '\(requestedVariant)'")
}

/// True when this machine's CPU has AVX-512F (what `-target-cpu native` then enables).
func hostHasAVX512() -> Bool {
    #if arch(x86_64)
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
    return info.split(separator: "\n").contains { $0.hasPrefix("flags") && $0.split(separator: " ").contains("avx512f") }
    #else
    return false
    #endif
}

/// The register-block family the kernels are compiled with (a SWIFTUNET_ISA_* define).
let isaDefine: String
let isaFlags: [String]
switch requestedVariant {
case "avx512":
    isaFlags = ["-target-cpu", "skylake-avx512"]
    isaDefine = "SWIFTUNET_ISA_AVX512"
case "avx2":
    isaFlags = ["-target-cpu", "haswell"]
    isaDefine = "SWIFTUNET_ISA_AVX2"
case "baseline":
    isaFlags = []
    isaDefine = "SWIFTUNET_ISA_BASELINE"
default:
    isaFlags = ["-target-cpu", "native"]
    isaDefine = hostHasAVX512() ? "SWIFTUNET_ISA_AVX512" : "SWIFTUNET_ISA_NATIVE_NARROW"
}
let variantDefine = "SWIFTUNET_VARIANT_" + requestedVariant.uppercased()

// The modules use neither Swift concurrency nor regular expressions: without the implicit
// imports of _Concurrency and _StringProcessing, libSwiftUNetC.so does not link their runtime
// libraries (and libdispatch, libBlocksRuntime with them), which the Python package would
// otherwise have to carry (setup.py copies what the library needs into the package).
let noImplicitImports: [String] = [
    "-Xfrontend", "-disable-implicit-concurrency-module-import",
    "-Xfrontend", "-disable-implicit-string-processing-module-import",
]

let computeSettings: [SwiftSetting] = [
    .unsafeFlags(isaFlags),
    .unsafeFlags(noImplicitImports),
    .define(isaDefine),
    .define(variantDefine),
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
            swiftSettings: computeSettings,
            // A SONAME, so that a variant's copy loaded from its own folder satisfies the
            // extension's DT_NEEDED entry (python/swiftunet/_variants.py).
            linkerSettings: [.unsafeFlags(["-Xlinker", "-soname=libSwiftUNetC.so"], .when(platforms: [.linux]))]
        ),
        .executableTarget(name: "SwiftUNetBench", dependencies: ["SwiftUNet"], swiftSettings: computeSettings),
        .testTarget(
            name: "SwiftUNetTests",
            dependencies: ["SwiftUNet"],
            swiftSettings: [.unsafeFlags(isaFlags), .define(isaDefine), .define(variantDefine)]
        ),
    ],
    swiftLanguageModes: [.v5]
)
