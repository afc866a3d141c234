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

/// Zero-padded, stride-phase-split copy of images, so that every row of a
/// convolution's implicit-im2col B matrix is a run of contiguous floats.
///
/// x [B, C, H, W] → planes [B, C, s, s, Hp, Wp] with
/// planes[b, c, py, px, r, q] = x[b, c, r·s + py - pad, q·s + px - pad] (0 outside),
/// Hp = ⌈(H + 2·pad)/s⌉, Wp = ⌈(W + 2·pad)/s⌉. Then input row oy·s + ky - pad is
/// phase row oy + ky/s of phase ky % s: contiguous in the output column.
struct PhasePlanes {
    let stride: Int
    let pad: Int
    let hp: Int
    let wp: Int
    var phasePlane: Int { hp * wp }
    var perChannel: Int { stride * stride * hp * wp }

    /// `minimumRows`/`minimumColumns` extend the zero padding when windows reach further
    /// (Winograd tiles overhang the image's far edge).
    init(height: Int, width: Int, stride: Int, pad: Int, minimumRows: Int = 0, minimumColumns: Int = 0) {
        self.stride = stride
        self.pad = pad
        hp = max(minimumRows, (height + 2 * pad + stride - 1) / stride)
        wp = max(minimumColumns, (width + 2 * pad + stride - 1) / stride)
    }

    /// Floats of scratch `fill(..., normalize:)` needs with `threads` threads (one
    /// normalised channel each); `threads` = `ThreadPool.shared.threadsFor(batch · groups)`,
    /// read once and passed to `fill` as `scratchThreads`.
    static func normalizeScratchFloats(threads: Int, spatial: Int, channelsPerGroup: Int) -> Int {
        threads * normalizedFloats(spatial: spatial, channelsPerGroup: channelsPerGroup)
    }

    /// Floats of one thread's normalised scratch: the whole group when it has at least 16
    /// pixels per channel and fits in 32 KiB (`groupNormBlock`: no per-channel tails), else
    /// one channel.
    static func normalizedFloats(spatial: Int, channelsPerGroup cpg: Int) -> Int {
        normalizesWholeGroup(spatial: spatial, channelsPerGroup: cpg) ? (cpg * spatial + 15) & ~15 : (spatial + 15) & ~15
    }

    static func normalizesWholeGroup(spatial: Int, channelsPerGroup cpg: Int) -> Bool {
        spatial >= groupNormBlockMinimumSpatial && cpg * spatial <= 8192
    }

    /// x [B, C, H, W] → planes [B, C, s, s, Hp, Wp] (parallel over images × channels).
    /// With `normalize`, the planes hold GroupNorm(x) (+ SiLU) instead, computed per
    /// (image, group) task (statistics, then each channel into `scratch` and on into its
    /// planes): the same values `groupNormForward` gives, one parallel region and no
    /// full-size intermediate. `scratch` then holds `normalizeScratchFloats` floats.
    func fill(_ x: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int,
              into planes: UnsafeMutablePointer<Float>, normalize: GroupNormSpec? = nil,
              scratch: UnsafeMutablePointer<Float>? = nil, scratchThreads: Int = 1) {
        let pool = ThreadPool.shared
        if normalize != nil && scratch != nil {
            let tasks = FillTasks(layout: self, x: x, planes: planes, normalize: normalize, scratch: scratch,
                                  channels: channels, height: height, width: width, channelsPerTask: 1,
                                  planeCount: batch * channels)
            pool.parallelFor(batch * normalize!.groups, maxThreads: scratchThreads, tasks)
        } else {
            // One block of contiguous channels per thread: with a task per channel, two threads
            // spent more on taking tasks in turn and on the cache lines where neighbouring
            // channels' planes meet than on the copies (docs/KERNELS.md, "Batch 1 on two threads:
            // what the second core costs here").
            let total = batch * channels, threads = pool.threadsFor(total)
            let perTask = (total + threads - 1) / threads
            let tasks = FillTasks(layout: self, x: x, planes: planes, normalize: nil, scratch: nil,
                                  channels: channels, height: height, width: width, channelsPerTask: perTask,
                                  planeCount: total)
            pool.parallelFor((total + perTask - 1) / perTask, maxThreads: threads, tasks)
        }
    }

    /// `fill`, with the normalising scratch (when `normalize` is given) taken from
    /// `workspace`, sized for the threads the fill will use; the caller's mark releases it.
    func fill(_ x: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int,
              into planes: UnsafeMutablePointer<Float>, normalize: GroupNormSpec?, workspace: Workspace) throws {
        guard let norm = normalize else {
            fill(x, batch: batch, channels: channels, height: height, width: width, into: planes)
            return
        }
        let threads = ThreadPool.shared.threadsFor(batch * norm.groups)
        let scratch = try workspace.floats(PhasePlanes.normalizeScratchFloats(threads: threads, spatial: height * width,
                                                                              channelsPerGroup: channels / norm.groups))
        fill(x, batch: batch, channels: channels, height: height, width: width, into: planes, normalize: norm,
             scratch: scratch, scratchThreads: threads)
    }

    /// One channel: x [H, W] → planes [s, s, Hp, Wp]
    @inline(__always)
    func fillChannel(_ src: UnsafePointer<Float>, height: Int, width: Int, into dst: UnsafeMutablePointer<Float>) {
        let s = stride, pad = pad, hp = hp, wp = wp
        let phasePlane = hp * wp
        if pad == 1 && (s == 2 || s == 4) {
            fillPadOneRows(src, height: height, width: width, into: dst, phasePlane: phasePlane)
            return
        }
        var plane = dst
        for py in 0..<s {
            for px in 0..<s {
                for r in 0..<hp {
                    let iy = r * s + py - pad
                    let row = plane + r * wp
                    if iy < 0 || iy >= height {
                        row.update(repeating: 0, count: wp)
                        continue
                    }
                    let srow = src + iy * width
                    if s == 1 {
                        // Interior copy with pad zeros on both sides.
                        let lo = min(wp, pad), hi = min(wp, pad + width)
                        row.update(repeating: 0, count: lo)
                        (row + lo).update(from: srow + (lo - pad), count: hi - lo)
                        (row + hi).update(repeating: 0, count: wp - hi)
                    } else {
                        // Columns q with 0 <= q·s + px - pad < width form one range [lo, hi).
                        let first = pad - px
                        let lo = min(wp, max(0, (first + s - 1) / s))
                        let last = width - 1 + pad - px   // q·s <= last (integer division would round a negative up)
                        let hi = last < 0 ? lo : max(lo, min(wp, last / s + 1))
                        row.update(repeating: 0, count: lo)
                        var ix = lo * s - first
                        for q in lo..<hi {
                            row[q] = srow[ix]
                            ix += s
                        }
                        (row + hi).update(repeating: 0, count: wp - hi)
                    }
                }
                plane += phasePlane
            }
        }
    }

    /// The stride-2 and stride-4, padding-1 fill, one input row at a time: all of a channel's
    /// planes are zeroed, then each image row is split into its s column phases with
    /// constant-index lane shuffles (16 pixels per step, then 8), the ragged end pixel by pixel.
    /// x [H, W] → planes [s, s, Hp, Wp]
    @inline(__always)
    private func fillPadOneRows(_ src: UnsafePointer<Float>, height: Int, width: Int,
                                into dst: UnsafeMutablePointer<Float>, phasePlane: Int) {
        let s = stride
        dst.update(repeating: 0, count: perChannel)
        for iy in 0..<height {
            // Padded row iy + 1 is phase row (iy + 1) / s of row phase (iy + 1) % s.
            let py = (iy + 1) % s, r = (iy + 1) / s
            let rowBase = dst + py * s * phasePlane + r * wp     // column phase 0 of this row
            let srow = src + iy * width
            // Padded column ix + 1 = q·s + px.
            var ix = 0
            if s == 4 {
                let p0 = rowBase, p1 = rowBase + phasePlane, p2 = rowBase + 2 * phasePlane, p3 = rowBase + 3 * phasePlane
                while ix + 16 <= width {
                    let v = load16(srow + ix)
                    let q = ix / 4
                    // ix + l + 1 ≡ px (mod 4): lanes 0,4,8,12 → px 1; 1,5,… → 2; 2,6,… → 3; 3,7,… → px 0 (next q).
                    storeFour(SIMD4(v[0], v[4], v[8], v[12]), p1 + q)
                    storeFour(SIMD4(v[1], v[5], v[9], v[13]), p2 + q)
                    storeFour(SIMD4(v[2], v[6], v[10], v[14]), p3 + q)
                    storeFour(SIMD4(v[3], v[7], v[11], v[15]), p0 + q + 1)
                    ix += 16
                }
                if ix + 8 <= width {
                    // Eight more (widths 24–31 and 8–15: 28 and 14 are levels of a 28×28 model).
                    let v = UnsafeRawPointer(srow + ix).loadUnaligned(as: SIMD8<Float>.self)
                    let q = ix / 4
                    storeTwo(SIMD2(v[0], v[4]), p1 + q)
                    storeTwo(SIMD2(v[1], v[5]), p2 + q)
                    storeTwo(SIMD2(v[2], v[6]), p3 + q)
                    storeTwo(SIMD2(v[3], v[7]), p0 + q + 1)
                    ix += 8
                }
            } else {
                let p0 = rowBase, p1 = rowBase + phasePlane
                while ix + 16 <= width {
                    let v = load16(srow + ix)
                    let q = ix / 2
                    storeEight(SIMD8(v[0], v[2], v[4], v[6], v[8], v[10], v[12], v[14]), p1 + q)
                    storeEight(SIMD8(v[1], v[3], v[5], v[7], v[9], v[11], v[13], v[15]), p0 + q + 1)
                    ix += 16
                }
                if ix + 8 <= width {
                    let v = UnsafeRawPointer(srow + ix).loadUnaligned(as: SIMD8<Float>.self)
                    let q = ix / 2
                    storeFour(SIMD4(v[0], v[2], v[4], v[6]), p1 + q)
                    storeFour(SIMD4(v[1], v[3], v[5], v[7]), p0 + q + 1)
                    ix += 8
                }
            }
            // The ragged end (all of a row narrower than 16, e.g. 14 or 7 pixels): constant
            // shifts and masks instead of a division by the runtime stride per pixel.
            if s == 4 {
                while ix < width {
                    let p = ix + 1
                    rowBase[(p & 3) * phasePlane + (p >> 2)] = srow[ix]
                    ix += 1
                }
            } else {
                while ix < width {
                    let p = ix + 1
                    rowBase[(p & 1) * phasePlane + (p >> 1)] = srow[ix]
                    ix += 1
                }
            }
        }
    }
}

/// The tasks of `PhasePlanes.fill`: task = `channelsPerTask` consecutive channels of the
/// batch (numbered image after image, `planeCount` in all), or with `normalize` one
/// (image, group): statistics, then each channel normalised into the thread's `scratch`
/// row and on into its planes.
private struct FillTasks: ParallelTasks {
    let layout: PhasePlanes
    let x: UnsafePointer<Float>
    let planes: UnsafeMutablePointer<Float>
    let normalize: GroupNormSpec?
    let scratch: UnsafeMutablePointer<Float>?
    let channels: Int
    let height: Int
    let width: Int
    let channelsPerTask: Int
    let planeCount: Int

    func run(_ task: Int, thread: Int) {
        let spatial = height * width, perChannel = layout.perChannel
        guard let norm = normalize, let scratch = scratch else {
            let first = task * channelsPerTask, end = min(first + channelsPerTask, planeCount)
            for c in first..<end {
                layout.fillChannel(x + c * spatial, height: height, width: width, into: planes + c * perChannel)
            }
            return
        }
        let groups = norm.groups, cpg = channels / groups
        let b = task / groups, g = task % groups
        let base = (b * channels + g * cpg) * spatial
        let stats = groupStatistics(x + base, channels: cpg, spatial: spatial, eps: norm.eps)
        let normed = scratch + thread * PhasePlanes.normalizedFloats(spatial: spatial, channelsPerGroup: cpg)
        if PhasePlanes.normalizesWholeGroup(spatial: spatial, channelsPerGroup: cpg) {
            groupNormBlock(x + base, normed, channels: cpg, spatial: spatial, mean: stats.mean,
                           invStd: Float(stats.invStd), gamma: norm.gamma + g * cpg, beta: norm.beta + g * cpg,
                           silu: norm.silu)
            for c in 0..<cpg {
                layout.fillChannel(normed + c * spatial, height: height, width: width,
                                   into: planes + (b * channels + g * cpg + c) * perChannel)
            }
            return
        }
        for c in 0..<cpg {
            let ch = g * cpg + c
            groupNormChannel(x + base + c * spatial, normed, spatial: spatial, mean: stats.mean,
                             scale: Float(stats.invStd) * norm.gamma[ch], shift: norm.beta[ch], silu: norm.silu)
            layout.fillChannel(normed, height: height, width: width, into: planes + (b * channels + ch) * perChannel)
        }
    }
}

@inline(__always) private func storeTwo(_ v: SIMD2<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD2<Float>.self)
}
@inline(__always) private func storeFour(_ v: SIMD4<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD4<Float>.self)
}
@inline(__always) private func storeEight(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// The B operand of a convolution as a GEMM, packed panel by panel from
/// `PhasePlanes` of one image (an implicit im2col; no unfolded copy is ever made).
///
/// B [Cin·k·k, Hout·Wout] with B[(ci·k + ky)·k + kx, oy·Wout + ox]
/// = planes[ci, ky % s, kx % s, oy + ky/s + offsetY, ox + kx/s + offsetX].
/// The offsets shift the window (the sub-pixel convolutions use them).
struct PhaseSource: PanelSource {
    let planes: UnsafePointer<Float>
    let layout: PhasePlanes
    let kernel: Int
    let offsetY: Int
    let offsetX: Int
    let outWidth: Int

    @inline(__always)
    func packPanel(k0: Int, kc: Int, n0: Int, width panelWidth: Int, into dst: UnsafeMutablePointer<Float>) {
        // Int32 keeps the table under the 1 KiB that Swift will place on the stack.
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: 3 * gemmColumnBlock + kernel * kernel) { segments in
            // Split the panel's columns into runs that stay on one output row:
            // (first column in the panel, length, offset in the phase plane).
            let seg = segments.baseAddress!
            var count = 0
            var oy = n0 / outWidth, ox = n0 % outWidth, j = 0
            while j < panelWidth {
                let run = min(outWidth - ox, panelWidth - j)
                seg[3 * count] = Int32(truncatingIfNeeded: j)
                seg[3 * count + 1] = Int32(truncatingIfNeeded: run)
                seg[3 * count + 2] = Int32(truncatingIfNeeded: (oy + offsetY) * layout.wp + ox + offsetX)
                count += 1
                j += run
                ox = 0
                oy += 1
            }
            // Offset of each tap's window in a channel's phase planes (no divisions per row).
            let s = layout.stride, taps = kernel * kernel
            let tapOffset = seg + 3 * gemmColumnBlock
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    tapOffset[ky * kernel + kx] = Int32(truncatingIfNeeded:
                        ((ky % s) * s + kx % s) * layout.phasePlane + (ky / s) * layout.wp + kx / s)
                }
            }
            var ci = k0 / taps
            var tap = k0 % taps
            var d = dst
            if panelWidth < gemmColumnBlock {
                // Zero the unused columns inline (a memset call per row costs more than the row).
                for r in 0..<kc { zeroRun(dst + r * gemmColumnBlock + panelWidth, count: gemmColumnBlock - panelWidth) }
            }
            for _ in 0..<kc {
                let base = planes + ci * layout.perChannel + Int(tapOffset[tap])
                for t in 0..<count {
                    let start = Int(seg[3 * t]), len = Int(seg[3 * t + 1])
                    copyRun(from: base + Int(seg[3 * t + 2]), to: d + start, count: len)
                }
                d += gemmColumnBlock
                tap += 1
                if tap == taps { tap = 0; ci += 1 }
            }
        }
    }
}

/// Zeroes `count` floats with vector stores where the run allows (never outside the run;
/// a ragged end is one more store ending exactly at `count`, overlapping).
@inline(__always)
func zeroRun(_ dst: UnsafeMutablePointer<Float>, count: Int) {
    if count >= 16 {
        var i = 0
        while i + 16 <= count {
            store16(Vec16(), dst + i)
            i += 16
        }
        if i < count { store16(Vec16(), dst + count - 16) }
    } else if count >= 8 {
        UnsafeMutableRawPointer(dst).storeBytes(of: SIMD8<Float>(), as: SIMD8<Float>.self)
        UnsafeMutableRawPointer(dst + count - 8).storeBytes(of: SIMD8<Float>(), as: SIMD8<Float>.self)
    } else if count >= 4 {
        UnsafeMutableRawPointer(dst).storeBytes(of: SIMD4<Float>(), as: SIMD4<Float>.self)
        UnsafeMutableRawPointer(dst + count - 4).storeBytes(of: SIMD4<Float>(), as: SIMD4<Float>.self)
    } else {
        for i in 0..<count { dst[i] = 0 }
    }
}

/// Copies `count` floats with vector moves where the run allows (never reads or writes
/// outside it). A ragged end is done by one more vector move ending exactly at `count`,
/// overlapping lanes already copied (same values), so runs of 14 or 7 (the 28×28 model's
/// tile rows) cost two moves instead of a scalar loop.
@inline(__always)
func copyRun(from src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, count: Int) {
    @inline(__always) func move8(_ i: Int) {
        UnsafeMutableRawPointer(dst + i).storeBytes(of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self),
                                                    as: SIMD8<Float>.self)
    }
    @inline(__always) func move4(_ i: Int) {
        UnsafeMutableRawPointer(dst + i).storeBytes(of: UnsafeRawPointer(src + i).loadUnaligned(as: SIMD4<Float>.self),
                                                    as: SIMD4<Float>.self)
    }
    if count >= 16 {
        var i = 0
        while i + 16 <= count {
            store16(load16(src + i), dst + i)
            i += 16
        }
        if i < count { store16(load16(src + count - 16), dst + count - 16) }
    } else if count >= 8 {
        move8(0)
        if count > 8 { move8(count - 8) }
    } else if count >= 4 {
        move4(0)
        if count > 4 { move4(count - 4) }
    } else {
        for i in 0..<count { dst[i] = src[i] }
    }
}

/// x [B, Cin, H, W] → y [B, Cout, Hout, Wout]; y = conv(x) + bias (+ y when `accumulate`).
///
/// An implicit-GEMM convolution: y_b [Cout, Hout·Wout] = W [Cout, Cin·k·k] · B_b, with
/// B_b packed from padded phase planes of x_b as the product runs (1×1 convolutions
/// read x_b directly). `weights` is [Cout, Cin·k·k]. `bias` holds Cout values per
/// image, image b's at `bias + b * biasBatchStride` (stride 0 shares one bias).
func conv2dForward(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights: PackedMatrix, bias: UnsafePointer<Float>, biasBatchStride: Int,
    y: UnsafeMutablePointer<Float>, accumulate: Bool, normalize: GroupNormSpec? = nil, workspace: Workspace
) throws {
    let hw = g.height * g.width
    let ohw = g.outHeight * g.outWidth
    let inPlane = g.inChannels * hw, outPlane = g.outChannels * ohw
    if g.kernel == 1 && g.stride == 1 && g.padding == 0 {
        precondition(normalize == nil, "1×1 convolutions read x in place: normalise it first")
        try batchedGemm(DenseOperands(weights: weights, b: x, bStride: inPlane, ld: hw, cBase: y, cStride: outPlane,
                                      biasBase: bias, biasStride: biasBatchStride),
                        n: ohw, images: batch, ldc: ohw, accumulate: accumulate, workspace: workspace)
        return
    }
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let layout = PhasePlanes(height: g.height, width: g.width, stride: g.stride, pad: g.padding)
    let perImage = g.inChannels * layout.perChannel
    let planes = try workspace.floats(batch * perImage)
    try layout.fill(x, batch: batch, channels: g.inChannels, height: g.height, width: g.width, into: planes,
                    normalize: normalize, workspace: workspace)
    try batchedGemm(ImplicitConvOperands(weights: weights, planes: planes, perImage: perImage, layout: layout,
                                         kernel: g.kernel, outWidth: g.outWidth, y: y, outPlane: outPlane,
                                         biasBase: bias, biasStride: biasBatchStride),
                    n: ohw, images: batch, ldc: ohw, accumulate: accumulate, workspace: workspace)
}

/// x [B, Cin, H, W] → y [B, Cout, H, W]: a 3×3, stride-1, padding-1 convolution computed
/// directly, y = conv(x) + bias (+ y when `accumulate`), for layers with few input or
/// output channels (the RGB/gray-in and -out convolutions). As a GEMM their one small
/// dimension wastes most of each micro-tile, and packing the implicit im2col costs as
/// much as the product; here each output row is 16 columns per vector, read straight
/// from the zero-padded planes, with 4 output channels × 2 vectors of accumulators.
///
/// `weights` is PyTorch's [Cout, Cin, 3, 3]; `bias` holds Cout values per image at
/// `bias + b * biasBatchStride`. With `normalize`, the planes hold GroupNorm(x) (+ SiLU).
/// Every output sums its taps in one fixed order (ci, ky, kx), whatever the task cut.
func conv3x3DirectForward(
    _ x: UnsafePointer<Float>, batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int,
    weights: UnsafePointer<Float>, bias: UnsafePointer<Float>, biasBatchStride: Int,
    y: UnsafeMutablePointer<Float>, accumulate: Bool, normalize: GroupNormSpec? = nil, workspace: Workspace
) throws {
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let layout = PhasePlanes(height: height, width: width, stride: 1, pad: 1)
    let perImage = inChannels * layout.perChannel
    // 16 floats of slack: a row's last vector may read up to 15 floats past the last plane.
    let planes = try workspace.floats(batch * perImage + 16)
    try layout.fill(x, batch: batch, channels: inChannels, height: height, width: width, into: planes,
                    normalize: normalize, workspace: workspace)
    let pool = ThreadPool.shared
    pool.parallelFor(batch * height, maxThreads: pool.threadsFor(batch * height),
                     DirectConvRowTasks(planes: planes, perImage: perImage, wp: layout.wp, planeStride: layout.perChannel,
                                        weights: weights, bias: bias, biasBatchStride: biasBatchStride, y: y,
                                        inChannels: inChannels, outChannels: outChannels, height: height, width: width,
                                        accumulate: accumulate))
}

/// Whether the direct 3×3 convolution keeps 4 channels × 32 columns of sums (8 SIMD16
/// accumulators: 8 zmm, or 16 ymm, which would spill on a 16-register CPU) or 4 × 16 (AVX2,
/// NEON, baseline). Each output's sum is the same either way.
#if SWIFTUNET_ISA_AVX512
let directConvPairsOfVectors = true
#else
let directConvPairsOfVectors = false
#endif

/// The tasks of `conv3x3DirectForward`: task = one output row of one image, all channels.
private struct DirectConvRowTasks: ParallelTasks {
    let planes: UnsafePointer<Float>
    let perImage: Int
    let wp: Int
    let planeStride: Int
    let weights: UnsafePointer<Float>
    let bias: UnsafePointer<Float>
    let biasBatchStride: Int
    let y: UnsafeMutablePointer<Float>
    let inChannels: Int
    let outChannels: Int
    let height: Int
    let width: Int
    let accumulate: Bool

    func run(_ task: Int, thread: Int) {
        let b = task / height, oy = task % height
        let cin = inChannels, cout = outChannels
        let source = planes + b * perImage + oy * wp    // padded row oy is input row oy - 1
        let imageBias = bias + b * biasBatchStride
        let taps = cin * 9
        var co0 = 0
        while co0 < cout {
            let used = min(4, cout - co0)
            // Slots past the last channel repeat it (their results are not stored).
            let w0 = weights + co0 * taps
            let w1 = weights + min(co0 + 1, cout - 1) * taps
            let w2 = weights + min(co0 + 2, cout - 1) * taps
            let w3 = weights + min(co0 + 3, cout - 1) * taps
            var x0 = 0
            while x0 < width {
                let pair = directConvPairsOfVectors && width - x0 > 16
                var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
                var b0 = Vec16(), b1 = Vec16(), b2 = Vec16(), b3 = Vec16()
                var t = 0
                for ci in 0..<cin {
                    let channel = source + ci * planeStride + x0
                    for ky in 0..<3 {
                        let row = channel + ky * wp
                        for kx in 0..<3 {
                            let u = load16(row + kx)
                            let c0 = Vec16(repeating: w0[t]), c1 = Vec16(repeating: w1[t])
                            let c2 = Vec16(repeating: w2[t]), c3 = Vec16(repeating: w3[t])
                            a0.addProduct(c0, u); a1.addProduct(c1, u); a2.addProduct(c2, u); a3.addProduct(c3, u)
                            if pair {
                                let v = load16(row + kx + 16)
                                b0.addProduct(c0, v); b1.addProduct(c1, v); b2.addProduct(c2, v); b3.addProduct(c3, v)
                            }
                            t += 1
                        }
                    }
                }
                let sums = (a0, a1, a2, a3), seconds = (b0, b1, b2, b3)
                for slot in 0..<used {
                    let co = co0 + slot
                    let first: Vec16, second: Vec16
                    switch slot {
                    case 0: (first, second) = (sums.0, seconds.0)
                    case 1: (first, second) = (sums.1, seconds.1)
                    case 2: (first, second) = (sums.2, seconds.2)
                    default: (first, second) = (sums.3, seconds.3)
                    }
                    let out = y + ((b * cout + co) * height + oy) * width + x0
                    let biasValue = Vec16(repeating: imageBias[co])
                    storeDirectRow(first + biasValue, out, count: min(16, width - x0), accumulate: accumulate)
                    if pair {
                        storeDirectRow(second + biasValue, out + 16, count: min(16, width - x0 - 16), accumulate: accumulate)
                    }
                }
                x0 += pair ? 32 : 16
            }
            co0 += 4
        }
    }
}

/// p[0..<count] = v[0..<count], or p + v when `accumulate` (count in 1...16).
@inline(__always)
private func storeDirectRow(_ v: Vec16, _ p: UnsafeMutablePointer<Float>, count: Int, accumulate: Bool) {
    if count == 16 {
        store16(accumulate ? load16(p) + v : v, p)
    } else {
        for l in 0..<count { p[l] = accumulate ? p[l] + v[l] : v[l] }
    }
}

/// `conv2dForward`'s GEMMs: image b's B is read from its phase planes.
private struct ImplicitConvOperands: BatchedGemmOperands {
    let weights: PackedMatrix
    let planes: UnsafeMutablePointer<Float>
    let perImage: Int
    let layout: PhasePlanes
    let kernel: Int
    let outWidth: Int
    let y: UnsafeMutablePointer<Float>
    let outPlane: Int
    let biasBase: UnsafePointer<Float>
    let biasStride: Int

    @inline(__always) func a(_ image: Int) -> PackedMatrix { weights }
    @inline(__always) func source(_ image: Int) -> PhaseSource {
        PhaseSource(planes: planes + image * perImage, layout: layout, kernel: kernel,
                    offsetY: 0, offsetX: 0, outWidth: outWidth)
    }
    @inline(__always) func c(_ image: Int) -> UnsafeMutablePointer<Float> { y + image * outPlane }
    @inline(__always) func bias(_ image: Int) -> UnsafePointer<Float>? { biasBase + image * biasStride }
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
func packTransposedConvWeights(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int, kernel: Int,
                                store: WeightStore? = nil) throws -> SubPixelWeights {
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
            parities.append(try PackedMatrix(rows: outChannels, cols: cols, source: t, ld: cols, store: store))
        }
    }
    return SubPixelWeights(parities: parities)
}

/// x [B, Cin, H, W] → y [B, Cout, 2H, 2W] (image stride `outputBatchStride`): PyTorch's
/// ConvTranspose2d(k 4, stride 2, padding 1).
///
/// Four sub-pixel 2×2 convolutions (implicit GEMMs, no col2im scatter) write
/// planes [B, 4, Cout, H·W], which are then interleaved into y.
func convTranspose2dForward(
    _ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
    weights: SubPixelWeights, bias: UnsafePointer<Float>,
    y: UnsafeMutablePointer<Float>, outputBatchStride: Int? = nil, workspace: Workspace
) throws {
    precondition(g.kernel == 4 && g.stride == 2 && g.padding == 1)
    // Image b's output starts at y + b·outputBatchStride (default: packed [B, Cout, 2H, 2W]);
    // a larger stride lets the caller place it inside a channel concatenation.
    let yStride = outputBatchStride ?? g.outChannels * 4 * g.height * g.width
    let h = g.height, w = g.width, hw = h * w
    let cout = g.outChannels
    let outPlane = cout * hw
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let planes = try workspace.floats(batch * 4 * outPlane)
    // Parity (ry, rx) reads padded rows i + ty + ry, columns j + tx + rx.
    let layout = PhasePlanes(height: h, width: w, stride: 1, pad: 1)
    let padded = try workspace.floats(batch * g.inChannels * layout.perChannel)
    layout.fill(x, batch: batch, channels: g.inChannels, height: h, width: w, into: padded)
    let paddedImage = g.inChannels * layout.perChannel
    try batchedGemm(SubPixelOperands(parities: weights.parities, padded: padded, paddedImage: paddedImage,
                                     layout: layout, width: w, planes: planes, outPlane: outPlane, biasBase: bias),
                    n: hw, images: batch * 4, ldc: hw, accumulate: false, workspace: workspace)
    let pool = ThreadPool.shared
    pool.parallelFor(batch * cout, maxThreads: pool.threadsFor(batch * cout),
                     SubPixelInterleaveTasks(planes: planes, y: y, yStride: yStride, cout: cout, h: h, w: w))
}

/// `convTranspose2dForward`'s GEMMs: "image" i is parity i & 3 of image i >> 2.
private struct SubPixelOperands: BatchedGemmOperands {
    let parities: [PackedMatrix]
    let padded: UnsafeMutablePointer<Float>
    let paddedImage: Int
    let layout: PhasePlanes
    let width: Int
    let planes: UnsafeMutablePointer<Float>
    let outPlane: Int
    let biasBase: UnsafePointer<Float>

    @inline(__always) func a(_ image: Int) -> PackedMatrix { parities[image & 3] }
    @inline(__always) func source(_ image: Int) -> PhaseSource {
        let parity = image & 3
        return PhaseSource(planes: padded + (image >> 2) * paddedImage, layout: layout, kernel: 2,
                           offsetY: parity >> 1, offsetX: parity & 1, outWidth: width)
    }
    @inline(__always) func c(_ image: Int) -> UnsafeMutablePointer<Float> { planes + image * outPlane }
    @inline(__always) func bias(_ image: Int) -> UnsafePointer<Float>? { biasBase }
}

/// Interleave: y[b, co, 2i + ry, 2j + rx] = planes[b, 2ry + rx, co, i, j]; task = (b, co).
private struct SubPixelInterleaveTasks: ParallelTasks {
    let planes: UnsafeMutablePointer<Float>
    let y: UnsafeMutablePointer<Float>
    let yStride: Int
    let cout: Int
    let h: Int
    let w: Int

    func run(_ task: Int, thread: Int) {
        let hw = h * w, outPlane = cout * hw
        let b = task / cout, co = task % cout
        let dst = y + b * yStride + co * 4 * hw
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
