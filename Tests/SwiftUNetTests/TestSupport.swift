import XCTest
@testable import SwiftUNet

/// Deterministic test data in [-1, 1).
func randomValues(_ count: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in rng.nextUnitFloat() * 2 - 1 }
}

/// max |a - b| relative to max |b|, with a floor so all-zero references compare absolutely.
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var diff: Float = 0, scale: Float = 1e-6
    for i in 0..<a.count {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / scale
}

func assertClose(_ a: [Float], _ b: [Float], tolerance: Float = 1e-5, _ message: String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, message, file: file, line: line)
    let e = relativeError(a, b)
    XCTAssertLessThanOrEqual(e, tolerance, "relative error \(e) \(message)", file: file, line: line)
}
