/// Single-precision matrix multiply kernels.
///
/// All matrices are row-major. The weight operand `A` is packed once (when
/// weights are loaded) into `PackedMatrix`; the data operand `B` is read in place.

/// A weight matrix A [rows, cols] prepared for `gemm`.
public final class PackedMatrix {
    public let rows: Int
    public let cols: Int
    let data: UnsafeMutablePointer<Float>

    /// Packs `source` [rows, cols] with leading dimension `ld` (>= cols).
    init(rows: Int, cols: Int, source: UnsafePointer<Float>, ld: Int) throws {
        self.rows = rows
        self.cols = cols
        data = try allocateFloatsOrThrow(rows * cols, "packed weights")
        for r in 0..<rows {
            (data + r * cols).update(from: source + r * ld, count: cols)
        }
    }

    deinit { freeFloats(data) }
}

/// C [M, N] = A [M, K] · B [K, N] (+ C when `accumulate`) (+ rowBias[m] per row).
///
/// `b` has leading dimension `ldb`, `c` has `ldc`. Every output element sums
/// its K products in the same order however M and N are split.
func gemm(
    _ a: PackedMatrix, b: UnsafePointer<Float>, ldb: Int, n: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    rowBias: UnsafePointer<Float>?, accumulate: Bool
) {
    gemmPlain(m: a.rows, n: n, k: a.cols, a: a.data, lda: a.cols, b: b, ldb: ldb,
              c: c, ldc: ldc, rowBias: rowBias, accumulate: accumulate)
}

/// The plain twin of `gemm`: C [M, N] = A [M, K] · B [K, N] (+ C) (+ rowBias).
func gemmPlain(
    m: Int, n: Int, k: Int,
    a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    rowBias: UnsafePointer<Float>?, accumulate: Bool
) {
    for i in 0..<m {
        let crow = c + i * ldc
        let arow = a + i * lda
        if !accumulate { crow.update(repeating: 0, count: n) }
        for p in 0..<k {
            let av = arow[p]
            let brow = b + p * ldb
            for j in 0..<n { crow[j] += av * brow[j] }
        }
        if let bias = rowBias {
            let bv = bias[i]
            for j in 0..<n { crow[j] += bv }
        }
    }
}
