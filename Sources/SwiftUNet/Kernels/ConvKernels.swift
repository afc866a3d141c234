/// Convolution kernels (PyTorch semantics: cross-correlation, zero padding).

/// Geometry of a 2-D convolution over one image.
public struct ConvGeometry: Equatable {
    public var inChannels: Int
    public var outChannels: Int
    public var height: Int
    public var width: Int
    public var kernel: Int
    public var stride: Int
    public var padding: Int

    public init(inChannels: Int, outChannels: Int, height: Int, width: Int,
                kernel: Int, stride: Int, padding: Int) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.height = height
        self.width = width
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    public var outHeight: Int { (height + 2 * padding - kernel) / stride + 1 }
    public var outWidth: Int { (width + 2 * padding - kernel) / stride + 1 }
    /// Output size of the transposed convolution with this geometry.
    public var transposedHeight: Int { (height - 1) * stride - 2 * padding + kernel }
    public var transposedWidth: Int { (width - 1) * stride - 2 * padding + kernel }
}

/// Unfolds one image for a GEMM convolution.
/// x [Cin, H, W] → cols [Cin·k·k, Hout·Wout]
func im2col(_ x: UnsafePointer<Float>, _ g: ConvGeometry, _ cols: UnsafeMutablePointer<Float>) {
    let ho = g.outHeight, wo = g.outWidth, k = g.kernel
    var row = cols
    for ci in 0..<g.inChannels {
        let plane = x + ci * g.height * g.width
        for ky in 0..<k {
            for kx in 0..<k {
                for oy in 0..<ho {
                    let iy = oy * g.stride - g.padding + ky
                    let dst = row + oy * wo
                    if iy < 0 || iy >= g.height {
                        dst.update(repeating: 0, count: wo)
                        continue
                    }
                    let src = plane + iy * g.width
                    for ox in 0..<wo {
                        let ix = ox * g.stride - g.padding + kx
                        dst[ox] = (ix >= 0 && ix < g.width) ? src[ix] : 0
                    }
                }
                row += ho * wo
            }
        }
    }
}

/// x [B, Cin, H, W] → y [B, Cout, Hout, Wout]; y = conv(x) + bias (+ y when `accumulate`).
///
/// `weights` is [Cout, Cin·k·k]. `bias` holds Cout values per image, image b's
/// at `bias + b * biasBatchStride` (stride 0 shares one bias across the batch).
func conv2dForward(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights: PackedMatrix, bias: UnsafePointer<Float>, biasBatchStride: Int,
    y: UnsafeMutablePointer<Float>, accumulate: Bool, workspace: Workspace
) throws {
    let hw = g.height * g.width
    let ohw = g.outHeight * g.outWidth
    let direct = g.kernel == 1 && g.stride == 1 && g.padding == 0
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let cols = direct ? nil : try workspace.floats(g.inChannels * g.kernel * g.kernel * ohw)
    for b in 0..<batch {
        let xb = x + b * g.inChannels * hw
        var source = xb
        if let cols = cols {
            im2col(xb, g, cols)
            source = UnsafePointer(cols)
        }
        gemm(weights, b: source, ldb: ohw, n: ohw,
             c: y + b * g.outChannels * ohw, ldc: ohw,
             rowBias: bias + b * biasBatchStride, accumulate: accumulate)
    }
}

/// Plain twin of `conv2dForward` with weights in PyTorch layout [Cout, Cin, k, k].
/// x [B, Cin, H, W] → y [B, Cout, Hout, Wout]
func conv2dNaive(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights w: UnsafePointer<Float>, bias: UnsafePointer<Float>, biasBatchStride: Int,
    y: UnsafeMutablePointer<Float>, accumulate: Bool
) {
    let ho = g.outHeight, wo = g.outWidth, k = g.kernel
    for b in 0..<batch {
        for co in 0..<g.outChannels {
            for oy in 0..<ho {
                for ox in 0..<wo {
                    var s: Float = 0
                    for ci in 0..<g.inChannels {
                        for ky in 0..<k {
                            let iy = oy * g.stride - g.padding + ky
                            if iy < 0 || iy >= g.height { continue }
                            for kx in 0..<k {
                                let ix = ox * g.stride - g.padding + kx
                                if ix < 0 || ix >= g.width { continue }
                                s += w[((co * g.inChannels + ci) * k + ky) * k + kx]
                                    * x[((b * g.inChannels + ci) * g.height + iy) * g.width + ix]
                            }
                        }
                    }
                    let o = ((b * g.outChannels + co) * ho + oy) * wo + ox
                    y[o] = (accumulate ? y[o] : 0) + s + bias[b * biasBatchStride + co]
                }
            }
        }
    }
}

/// Packs a ConvTranspose2d weight [Cin, Cout, k, k] as Aᵀ [Cout·k·k, Cin] for `convTranspose2dForward`.
func packTransposedConvWeights(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int, kernel: Int) throws -> PackedMatrix {
    let rows = outChannels * kernel * kernel
    let t = try allocateFloatsOrThrow(rows * inChannels, "transposed-conv weights")
    defer { freeFloats(t) }
    for ci in 0..<inChannels {
        for r in 0..<rows { t[r * inChannels + ci] = w[ci * rows + r] }
    }
    return try PackedMatrix(rows: rows, cols: inChannels, source: t, ld: inChannels)
}

/// x [B, Cin, H, W] → y [B, Cout, (H-1)s-2p+k, (W-1)s-2p+k]: PyTorch's ConvTranspose2d.
///
/// Computes cols = Wᵀ · x, then scatters each column into the output window it
/// covers (col2im). `weights` comes from `packTransposedConvWeights`.
func convTranspose2dForward(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights: PackedMatrix, bias: UnsafePointer<Float>,
    y: UnsafeMutablePointer<Float>, workspace: Workspace
) throws {
    let hw = g.height * g.width
    let ho = g.transposedHeight, wo = g.transposedWidth, k = g.kernel
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let cols = try workspace.floats(g.outChannels * k * k * hw)
    for b in 0..<batch {
        gemm(weights, b: x + b * g.inChannels * hw, ldb: hw, n: hw,
             c: cols, ldc: hw, rowBias: nil, accumulate: false)
        let yb = y + b * g.outChannels * ho * wo
        for co in 0..<g.outChannels {
            let plane = yb + co * ho * wo
            plane.update(repeating: bias[co], count: ho * wo)
            for ky in 0..<k {
                for kx in 0..<k {
                    let col = cols + ((co * k + ky) * k + kx) * hw
                    for iy in 0..<g.height {
                        let oy = iy * g.stride - g.padding + ky
                        if oy < 0 || oy >= ho { continue }
                        for ix in 0..<g.width {
                            let ox = ix * g.stride - g.padding + kx
                            if ox < 0 || ox >= wo { continue }
                            plane[oy * wo + ox] += col[iy * g.width + ix]
                        }
                    }
                }
            }
        }
    }
}

/// Plain twin of `convTranspose2dForward` with weights in PyTorch layout [Cin, Cout, k, k].
/// x [B, Cin, H, W] → y [B, Cout, Hout, Wout]
func convTranspose2dNaive(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights w: UnsafePointer<Float>, bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
) {
    let ho = g.transposedHeight, wo = g.transposedWidth, k = g.kernel
    for b in 0..<batch {
        for co in 0..<g.outChannels {
            for oy in 0..<ho {
                for ox in 0..<wo {
                    var s: Float = bias[co]
                    for ci in 0..<g.inChannels {
                        for ky in 0..<k {
                            let ny = oy + g.padding - ky
                            if ny < 0 || ny % g.stride != 0 { continue }
                            let iy = ny / g.stride
                            if iy >= g.height { continue }
                            for kx in 0..<k {
                                let nx = ox + g.padding - kx
                                if nx < 0 || nx % g.stride != 0 { continue }
                                let ix = nx / g.stride
                                if ix >= g.width { continue }
                                s += w[((ci * g.outChannels + co) * k + ky) * k + kx]
                                    * x[((b * g.inChannels + ci) * g.height + iy) * g.width + ix]
                            }
                        }
                    }
                    y[((b * g.outChannels + co) * ho + oy) * wo + ox] = s
                }
            }
        }
    }
}
