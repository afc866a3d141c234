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

/// The B operand of a convolution as a GEMM, built panel by panel straight
/// from the image (an implicit im2col: no full unfolded copy is ever made).
///
/// x [Cin, H, W] viewed as B [Cin·k·k, Hout·Wout] with B[(ci·k + ky)·k + kx, oy·Wout + ox]
/// = x[ci, oy·s - padTop + ky, ox·s - padLeft + kx] (zero outside the image).
struct ConvImageSource: PanelSource {
    let x: UnsafePointer<Float>
    let height: Int
    let width: Int
    let kernel: Int
    let stride: Int
    let padTop: Int
    let padLeft: Int
    let outWidth: Int

    @inline(__always)
    func packPanel(k0: Int, kc: Int, n0: Int, width panelWidth: Int, into dst: UnsafeMutablePointer<Float>) {
        let taps = kernel * kernel
        var ci = k0 / taps
        var ky = (k0 % taps) / kernel
        var kx = k0 % kernel
        let oy0 = n0 / outWidth, ox0 = n0 % outWidth
        var d = dst
        for _ in 0..<kc {
            let plane = x + ci * height * width
            var oy = oy0, ox = ox0, j = 0
            while j < panelWidth {
                let run = min(outWidth - ox, panelWidth - j)
                let iy = oy * stride - padTop + ky
                let out = d + j
                if iy < 0 || iy >= height {
                    out.update(repeating: 0, count: run)
                } else if stride == 1 {
                    // Columns t in 0..<run read x[iy, ixStart + t]; only [lo, hi) is inside.
                    let src = plane + iy * width
                    let ixStart = ox - padLeft + kx
                    let lo = min(run, max(0, -ixStart)), hi = max(lo, min(run, width - ixStart))
                    if lo > 0 { out.update(repeating: 0, count: lo) }
                    if hi > lo { (out + lo).update(from: src + ixStart + lo, count: hi - lo) }
                    if run > hi { (out + hi).update(repeating: 0, count: run - hi) }
                } else {
                    let src = plane + iy * width
                    var ix = ox * stride - padLeft + kx
                    for t in 0..<run {
                        out[t] = (ix >= 0 && ix < width) ? src[ix] : 0
                        ix += stride
                    }
                }
                j += run
                ox = 0
                oy += 1
            }
            if panelWidth < gemmColumnBlock {
                (d + panelWidth).update(repeating: 0, count: gemmColumnBlock - panelWidth)
            }
            d += gemmColumnBlock
            kx += 1
            if kx == kernel {
                kx = 0
                ky += 1
                if ky == kernel { ky = 0; ci += 1 }
            }
        }
    }
}

/// x [B, Cin, H, W] → y [B, Cout, Hout, Wout]; y = conv(x) + bias (+ y when `accumulate`).
///
/// An implicit-GEMM convolution: y_b [Cout, Hout·Wout] = W [Cout, Cin·k·k] · B_b, with
/// B_b packed from the image as the product runs (1×1 convolutions read x_b directly).
/// `weights` is [Cout, Cin·k·k]. `bias` holds Cout values per image, image b's
/// at `bias + b * biasBatchStride` (stride 0 shares one bias across the batch).
func conv2dForward(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights: PackedMatrix, bias: UnsafePointer<Float>, biasBatchStride: Int,
    y: UnsafeMutablePointer<Float>, accumulate: Bool, workspace: Workspace
) throws {
    let hw = g.height * g.width
    let ohw = g.outHeight * g.outWidth
    let inPlane = g.inChannels * hw, outPlane = g.outChannels * ohw
    let cOf = { (b: Int) in y + b * outPlane }
    let biasOf = { (b: Int) -> UnsafePointer<Float>? in bias + b * biasBatchStride }
    if g.kernel == 1 && g.stride == 1 && g.padding == 0 {
        try batchedGemm({ _ in weights }, n: ohw, images: batch, workspace: workspace,
                        makeSource: { b in DenseSource(b: x + b * inPlane, ld: hw) },
                        cOf: cOf, ldc: ohw, biasOf: biasOf, accumulate: accumulate)
    } else {
        try batchedGemm({ _ in weights }, n: ohw, images: batch, workspace: workspace,
                        makeSource: { b in
                            ConvImageSource(x: x + b * inPlane, height: g.height, width: g.width, kernel: g.kernel,
                                            stride: g.stride, padTop: g.padding, padLeft: g.padding,
                                            outWidth: g.outWidth)
                        },
                        cOf: cOf, ldc: ohw, biasOf: biasOf, accumulate: accumulate)
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

/// A 4×4 stride-2 padding-1 ConvTranspose2d weight split into its four
/// sub-pixel 2×2 convolutions, one per output parity (ry, rx).
///
/// Output pixel (2i + ry, 2j + rx) only ever meets kernel rows ky ≡ ry + 1 (mod 2)
/// and columns likewise, so each parity is an ordinary 2×2 convolution of x:
/// tap t in {0, 1} reads x row i + t - 1 + ry with kernel row (ry == 0 ? 3 - 2t : 2 - 2t).
struct SubPixelWeights {
    /// parity 2·ry + rx → [Cout, Cin·2·2]
    let parities: [PackedMatrix]
}

/// The kernel row (or column) that tap `t` of sub-pixel parity `r` uses.
@inline(__always) func subPixelTap(_ r: Int, _ t: Int) -> Int { r == 0 ? 3 - 2 * t : 2 - 2 * t }

/// Packs a ConvTranspose2d weight [Cin, Cout, 4, 4] into four sub-pixel 2×2 convolutions.
func packTransposedConvWeights(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int, kernel: Int) throws -> SubPixelWeights {
    precondition(kernel == 4, "only the 4×4 stride-2 transposed convolution is implemented")
    let cols = inChannels * 4
    let t = try allocateFloatsOrThrow(max(1, outChannels * cols), "transposed-conv weights")
    defer { freeFloats(t) }
    var parities: [PackedMatrix] = []
    for ry in 0..<2 {
        for rx in 0..<2 {
            for co in 0..<outChannels {
                for ci in 0..<inChannels {
                    for ty in 0..<2 {
                        for tx in 0..<2 {
                            let ky = subPixelTap(ry, ty), kx = subPixelTap(rx, tx)
                            t[co * cols + (ci * 2 + ty) * 2 + tx] = w[((ci * outChannels + co) * 4 + ky) * 4 + kx]
                        }
                    }
                }
            }
            parities.append(try PackedMatrix(rows: outChannels, cols: cols, source: t, ld: cols))
        }
    }
    return SubPixelWeights(parities: parities)
}

/// x [B, Cin, H, W] → y [B, Cout, 2H, 2W]: PyTorch's ConvTranspose2d(k 4, stride 2, padding 1).
///
/// Four sub-pixel 2×2 convolutions (implicit GEMMs, no col2im scatter) write
/// planes [B, 4, Cout, H·W], which are then interleaved into y.
func convTranspose2dForward(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights: SubPixelWeights, bias: UnsafePointer<Float>,
    y: UnsafeMutablePointer<Float>, workspace: Workspace
) throws {
    precondition(g.kernel == 4 && g.stride == 2 && g.padding == 1)
    let h = g.height, w = g.width, hw = h * w
    let cout = g.outChannels
    let inPlane = g.inChannels * hw, outPlane = cout * hw
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let planes = try workspace.floats(batch * 4 * outPlane)
    try batchedGemm({ weights.parities[$0 & 3] }, n: hw, images: batch * 4, workspace: workspace,
                    makeSource: { i in
                        let parity = i & 3
                        return ConvImageSource(x: x + (i >> 2) * inPlane, height: h, width: w, kernel: 2, stride: 1,
                                               padTop: 1 - (parity >> 1), padLeft: 1 - (parity & 1), outWidth: w)
                    },
                    cOf: { planes + $0 * outPlane }, ldc: hw,
                    biasOf: { _ in bias }, accumulate: false)
    // Interleave: y[b, co, 2i + ry, 2j + rx] = planes[b, 2ry + rx, co, i, j].
    ThreadPool.shared.parallelFor(batch * cout) { task in
        let b = task / cout, co = task % cout
        let dst = y + task * 4 * hw
        for i in 0..<h {
            for ry in 0..<2 {
                let row = dst + (2 * i + ry) * 2 * w
                let even = planes + ((b * 4 + 2 * ry) * cout + co) * hw + i * w
                let odd = even + outPlane
                for j in 0..<w {
                    row[2 * j] = even[j]
                    row[2 * j + 1] = odd[j]
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
