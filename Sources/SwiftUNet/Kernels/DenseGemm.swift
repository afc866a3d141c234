/// General matrix products for training: C = op(A) · op(B), where either operand may
/// be a transposed view of a row-major matrix (dW = dY·Xᵀ, dX = Wᵀ·dY, ...).
///
/// They run on the inference GEMM (`gemmTile`'s micro-kernels): A is packed into a
/// caller's buffer (`PackedMatrix(rows:cols:source:rowStride:colStride:buffer:)`), B
/// is read through a strided panel source. The arithmetic contract is the GEMM's:
/// each element is `c = start; c = fma(a[m,k], b[k,n], c)` for k ascending, whatever
/// the split into tasks, so results do not depend on the thread count.

/// B [K, N] with element (k, n) at `b[k·kStride + n·nStride]`.
struct StridedSource: PanelSource {
    let b: UnsafePointer<Float>
    let kStride: Int
    let nStride: Int

    @inline(__always)
    func packPanel(k0: Int, kc: Int, n0: Int, width: Int, into dst: UnsafeMutablePointer<Float>) {
        if nStride == 1 {
            DenseSource(b: b, ld: kStride).packPanel(k0: k0, kc: kc, n0: n0, width: width, into: dst)
            return
        }
        // Columns of B are contiguous (a transposed view): gather each column down the panel.
        if width < gemmColumnBlock { dst.update(repeating: 0, count: kc * gemmColumnBlock) }
        for j in 0..<width {
            let column = b + (n0 + j) * nStride + k0 * kStride
            var d = dst + j
            for k in 0..<kc {
                d.pointee = column[k * kStride]
                d += gemmColumnBlock
            }
        }
    }
}

/// One GEMM with a packed A and a strided B (the `BatchedGemmOperands` of `matmul`).
private struct StridedOperands: BatchedGemmOperands {
    let weights: PackedMatrix
    let strided: StridedSource
    let cBase: UnsafeMutablePointer<Float>
    let rowBias: UnsafePointer<Float>?

    @inline(__always) func a(_ image: Int) -> PackedMatrix { weights }
    @inline(__always) func source(_ image: Int) -> StridedSource { strided }
    @inline(__always) func c(_ image: Int) -> UnsafeMutablePointer<Float> { cBase }
    @inline(__always) func bias(_ image: Int) -> UnsafePointer<Float>? { rowBias }
}

/// C [M, N] (row stride ldc) = A · B (+ C when `accumulate`) (+ rowBias[m]); A packed [M, K],
/// B [K, N] read through `b`. Parallel over blocks of C.
func matmul(_ a: PackedMatrix, _ b: StridedSource, n: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
            rowBias: UnsafePointer<Float>? = nil, accumulate: Bool, workspace: Workspace) throws {
    try batchedGemm(StridedOperands(weights: a, strided: b, cBase: c, rowBias: rowBias),
                    n: n, images: 1, ldc: ldc, accumulate: accumulate, workspace: workspace)
}

/// A row-major matrix or its transpose, as an operand of `denseGemm`: element (i, j) of
/// op(M) is `m[i·ld + j]`, or `m[j·ld + i]` when `transposed`.
struct MatrixOperand {
    let data: UnsafePointer<Float>
    let ld: Int
    let transposed: Bool

    init(_ data: UnsafePointer<Float>, ld: Int, transposed: Bool = false) {
        self.data = data
        self.ld = ld
        self.transposed = transposed
    }

    /// (row stride, column stride) of op(M).
    var strides: (Int, Int) { transposed ? (1, ld) : (ld, 1) }

    @inline(__always) func element(_ i: Int, _ j: Int) -> Float {
        transposed ? data[j * ld + i] : data[i * ld + j]
    }
}

/// C [M, N] (ldc) = op(A) [M, K] · op(B) [K, N] (+ C when `accumulate`): packs op(A) into
/// the workspace, then `matmul`.
func denseGemm(m: Int, n: Int, k: Int, a: MatrixOperand, b: MatrixOperand,
               c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, workspace: Workspace) throws {
    if m == 0 || n == 0 { return }
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let (rs, cs) = a.strides
    let packed = PackedMatrix(rows: m, cols: k, source: a.data, rowStride: rs, colStride: cs,
                              buffer: try workspace.floats(PackedMatrix.floatCount(rows: m, cols: k)))
    let (bk, bn) = b.strides
    try matmul(packed, StridedSource(b: b.data, kStride: bk, nStride: bn), n: n, c: c, ldc: ldc,
               accumulate: accumulate, workspace: workspace)
}

/// The plain twin of `denseGemm`: the same fused multiply-adds in the same order, one
/// element at a time, so the two agree bit for bit.
func denseGemmPlain(m: Int, n: Int, k: Int, a: MatrixOperand, b: MatrixOperand,
                    c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
    for i in 0..<m {
        for j in 0..<n {
            var sum: Float = accumulate ? c[i * ldc + j] : 0
            for p in 0..<k { sum = sum.addingProduct(a.element(i, p), b.element(p, j)) }
            c[i * ldc + j] = sum
        }
    }
}
