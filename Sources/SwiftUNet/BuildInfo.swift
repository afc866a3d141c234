import SwiftUNetSupport

/// How this copy of the library was compiled.
public enum BuildInfo {
    #if SWIFTUNET_PORTABLE
    public static let targetCPU = "portable"
    #else
    public static let targetCPU = "native"
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
    /// "arch=x86_64 target-cpu=native isa=avx512 simd=SIMD16<Float>".
    public static var summary: String {
        "arch=\(architecture) target-cpu=\(targetCPU) isa=\(vectorISA) simd=SIMD16<Float>"
    }
}
