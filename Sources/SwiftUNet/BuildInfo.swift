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

    public static var summary: String {
        "arch=\(architecture) target-cpu=\(targetCPU) simd=SIMD16<Float>"
    }
}
