import SwiftUNetSupport

/// How this copy of the library was compiled.
public enum BuildInfo {
    /// The kernel variant (Package.swift's SWIFTUNET_VARIANT): native, avx512, avx2 or baseline.
    #if SWIFTUNET_VARIANT_AVX512
    public static let variant = "avx512"
    #elseif SWIFTUNET_VARIANT_AVX2
    public static let variant = "avx2"
    #elseif SWIFTUNET_VARIANT_BASELINE
    public static let variant = "baseline"
    #else
    public static let variant = "native"
    #endif

    /// The `-target-cpu` the library was compiled for.
    #if SWIFTUNET_VARIANT_AVX512
    public static let targetCPU = "skylake-avx512"
    #elseif SWIFTUNET_VARIANT_AVX2
    public static let targetCPU = "haswell"
    #elseif SWIFTUNET_VARIANT_BASELINE
    public static let targetCPU = "generic"
    #else
    public static let targetCPU = "native"
    #endif

    /// The GEMM register blocks: AVX-512's SIMD16 tiles (32 registers), or the narrow SIMD8
    /// blocks for 16 ymm (AVX2, x86-64) or 32 q registers (NEON).
    #if SWIFTUNET_ISA_AVX512
    public static let registerBlocks = "simd16-8x32"
    #else
    public static let registerBlocks = "simd8-4x24"
    #endif

    #if arch(x86_64)
    public static let architecture = "x86_64"
    #elseif arch(arm64)
    public static let architecture = "arm64"
    #else
    public static let architecture = "other"
    #endif

    /// The widest vector instruction set the kernels were compiled for ("avx512",
    /// "avx2+fma", "sse2", "neon", ...): what `SIMD16<Float>` became in this build.
    public static let vectorISA = String(cString: swiftunet_compiled_isa())

    /// "key=value" pairs separated by spaces, e.g.
    /// "arch=x86_64 variant=avx2 target-cpu=haswell isa=avx2+fma blocks=simd8-4x24".
    public static var summary: String {
        "arch=\(architecture) variant=\(variant) target-cpu=\(targetCPU) isa=\(vectorISA) blocks=\(registerBlocks)"
    }
}
