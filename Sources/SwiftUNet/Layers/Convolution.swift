/// A square-kernel 2-D convolution: PyTorch's
/// `nn.Conv2d(inChannels, outChannels, kernel, stride, padding)`.
final class Conv2d {
    let inChannels: Int
    let outChannels: Int
    let kernel: Int
    let stride: Int
    let padding: Int
    let weight: Parameter
    let bias: Parameter
    /// The implicit-GEMM form, packed only for the convolutions no other route serves
    /// (the 1×1 ones, and 4×4 stride-2 ones too narrow for Winograd).
    private(set) var packed: PackedMatrix?
    /// F(2×2, 3×3) weights of a Winograd convolution (`usesWinograd`): prepared when the
    /// expected size runs F(2×2) tiles, else only once a call has needed them
    /// (`needsSmallTiles`, `prepareSmallTiles`). They take 16/9 of the kernel's memory.
    private(set) var winograd: WinogradWeights?
    /// F(4×4, 3×3) weights, prepared only when `prefersLargeTiles` holds at `expectedSpatialSize`
    /// (they take 4× the memory of the kernel).
    private(set) var winogradLarge: WinogradWeights?
    /// Set once a call ran F(2×2) tiles where the expected size runs F(4×4): from then on
    /// `prepare` rebuilds the F(2×2) weights too.
    private(set) var smallTilesWanted = false
    /// Set for 4×4 stride-2 padding-1 convolutions (the down-sampling ones): Winograd
    /// F(2×2, 2×2) over the four input phases.
    private(set) var stridedWinograd: StridedWinogradWeights?
    /// The height/width this layer usually sees (set by the model before `prepare`).
    var expectedSpatialSize = 0

    /// Whether an H×W image uses F(4×4, 3×3) tiles (when prepared). A function of the shape
    /// only, so results never depend on the batch or the thread count.
    ///
    /// From 12×12 up (2.25 multiplies per output instead of 4). Chunks of tiles run across
    /// images, so at 16×16 and 14×14 the 16 F(4×4) tiles of an image fill half a 32-column
    /// panel and two images fill one. At 16×16 this trades batch 1 on 2 threads, where the
    /// one chunk must split its output channels (F(2×2)'s 64 tiles split into two chunks),
    /// for everything else. Measured with alternating builds, best of 4–6 runs each
    /// (`SwiftUNetBench 20 <threads> <case> <batch>`), F(4×4) against F(2×2) at 16×16:
    /// [64, 128, 256] batch 1, 1 thread 17.8 / 19.5 ms, batch 8, 1 thread 110 / 117 ms;
    /// [32, 64, 128] batch 8, 2 threads 17.5 / 18.2 ms; batch 1, 2 threads 3.46 / 3.32 ms.
    /// Measured again once row chunks repeat their input transform (`runWinogradStages`),
    /// best of 6: batch 1, 1 thread 3.88 / 4.22 ms ([32, 64, 128]) and 16.0 / 17.5 ms
    /// ([64, 128, 256]); batch 1, 2 threads 2.86 / 2.81 and 9.55 / 9.27 ms, about even.
    /// Below 12 the F(4×4) tiles overhang too much (8×8: 4 tiles covering 16×16).
    static func prefersLargeTiles(height: Int, width: Int) -> Bool {
        height >= 12 && width >= 12
    }

    /// Winograd F(2×2, 3×3) pays once both channel counts fill the 8-row micro-tiles;
    /// below that (the RGB-in / RGB-out convolutions) `conv3x3DirectForward` is faster.
    static let winogradMinimumChannels = 8

    init(_ registry: ParameterRegistry, _ prefix: String, inChannels: Int, outChannels: Int,
         kernel: Int, stride: Int = 1, padding: Int = 0) throws {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        let fanIn = inChannels * kernel * kernel
        weight = try registry.make(prefix + ".weight", [outChannels, inChannels, kernel, kernel], .uniform(fanIn: fanIn))
        bias = try registry.make(prefix + ".bias", [outChannels], .uniform(fanIn: fanIn))
    }

    /// A 3×3 stride-1 padding-1 convolution wide enough for Winograd to pay.
    var usesWinograd: Bool {
        kernel == 3 && stride == 1 && padding == 1 && min(inChannels, outChannels) >= Conv2d.winogradMinimumChannels
    }

    /// A 4×4 stride-2 padding-1 convolution served by Winograd F(2×2, 2×2) (calls that
    /// neither accumulate nor take a per-image bias).
    var usesStridedWinograd: Bool {
        kernel == 4 && stride == 2 && padding == 1 && min(inChannels, outChannels) >= Conv2d.winogradMinimumChannels
    }

    /// Whether calls at the expected size run F(4×4) tiles (and so `winogradLarge` is prepared).
    private var expectsLargeTiles: Bool {
        Conv2d.prefersLargeTiles(height: expectedSpatialSize, width: expectedSpatialSize)
    }

    /// Whether a call at height × width runs F(2×2) tiles: Winograd convolutions whose call
    /// or expected size is below the F(4×4) threshold.
    func runsSmallTiles(height: Int, width: Int) -> Bool {
        usesWinograd && !(expectsLargeTiles && Conv2d.prefersLargeTiles(height: height, width: width))
    }

    /// Whether a call at height × width runs F(2×2) tiles that are not prepared yet.
    func needsSmallTiles(height: Int, width: Int) -> Bool {
        winograd == nil && runsSmallTiles(height: height, width: width)
    }

    /// Prepares the F(2×2) weights (into `store`) and keeps them through later `prepare`s.
    func prepareSmallTiles(store: WeightStore? = nil) throws {
        guard usesWinograd else { return }
        smallTilesWanted = true
        if winograd == nil {
            winograd = try packWinogradWeights(weight.data, inChannels: inChannels, outChannels: outChannels,
                                               tile: .two, store: store)
        }
    }

    /// Rebuilds the packed weights (into `store` when given); call after the weights change.
    /// Only the forms calls run are kept: the Winograd ones, or the GEMM form where there is
    /// no Winograd route and no direct 3×3 kernel.
    func prepare(store: WeightStore? = nil) throws {
        if usesWinograd {
            winograd = !expectsLargeTiles || smallTilesWanted
                ? try packWinogradWeights(weight.data, inChannels: inChannels, outChannels: outChannels, tile: .two,
                                          store: store)
                : nil
            winogradLarge = expectsLargeTiles
                ? try packWinogradWeights(weight.data, inChannels: inChannels, outChannels: outChannels, tile: .four,
                                          store: store)
                : nil
        } else {
            winograd = nil
            winogradLarge = nil
        }
        stridedWinograd = usesStridedWinograd
            ? try packStridedWinogradWeights(weight.data, inChannels: inChannels, outChannels: outChannels, store: store)
            : nil
        packed = needsGemmForm ? try gemmForm(store: store) : nil
    }

    /// Whether every call reads the GEMM form: neither a Winograd route nor the direct 3×3
    /// kernel (which reads the raw weights) serves this convolution.
    private var needsGemmForm: Bool {
        !(kernel == 3 && stride == 1 && padding == 1) && !usesStridedWinograd
    }

    /// The weights [Cout, Cin·k·k] packed for `conv2dForward`, into `store` when given.
    private func gemmForm(store: WeightStore?) throws -> PackedMatrix {
        let k = inChannels * kernel * kernel
        return try PackedMatrix(rows: outChannels, cols: k, source: weight.data, ld: k, store: store)
    }

    func geometry(height: Int, width: Int) -> ConvGeometry {
        ConvGeometry(inChannels: inChannels, outChannels: outChannels, height: height, width: width,
                     kernel: kernel, stride: stride, padding: padding)
    }

    /// x [B, Cin, H, W] → y [B, Cout, Hout, Wout]. With `accumulate`, y's contents are added
    /// (a fused residual). `perImageBias` [B, Cout] replaces the layer's own bias when given
    /// (callers fold a per-image term such as a time embedding into it).
    /// With `normalizedBy`, the convolution reads `norm(x)` (+ SiLU) instead of x, fused
    /// into the padding of its input where the kernel pads (3×3), computed first otherwise.
    func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                 into y: UnsafeMutablePointer<Float>, accumulate: Bool = false,
                 perImageBias: UnsafePointer<Float>? = nil, normalizedBy norm: GroupNorm? = nil, silu: Bool = true,
                 workspace: Workspace) throws {
        if let norm = norm, padding == 0 || (stridedWinograd != nil && !accumulate && perImageBias == nil) {
            let mark = workspace.mark()
            defer { workspace.release(to: mark) }
            let normed = try workspace.floats(batch * inChannels * height * width)
            norm.forward(x, batch: batch, spatial: height * width, silu: silu, into: normed)
            try forward(normed, batch: batch, height: height, width: width, into: y, accumulate: accumulate,
                        perImageBias: perImageBias, workspace: workspace)
            return
        }
        let normalize = norm.map {
            GroupNormSpec(groups: $0.groups, gamma: $0.weight.data, beta: $0.bias.data, eps: $0.eps, silu: silu)
        }
        if let strided = stridedWinograd, !accumulate, perImageBias == nil {
            try winogradConv4x4Stride2(x, batch: batch, inChannels: inChannels, height: height, width: width,
                                       weights: strided, bias: bias.data, y: y, workspace: workspace)
            return
        }
        if usesWinograd {
            // The model prepares the F(2×2) weights its calls need before they run
            // (`DiffusionModel.preparePackedForms`); a call here without them packs a copy
            // for itself (the same values, so the same result).
            let tiles = runsSmallTiles(height: height, width: width)
                ? try winograd ?? packWinogradWeights(weight.data, inChannels: inChannels, outChannels: outChannels,
                                                      tile: .two)
                : winogradLarge!
            try winogradConv3x3(x, batch: batch, inChannels: inChannels, height: height, width: width,
                                weights: tiles, bias: perImageBias ?? UnsafePointer(bias.data),
                                biasBatchStride: perImageBias == nil ? 0 : outChannels,
                                y: y, accumulate: accumulate, normalize: normalize, workspace: workspace)
            return
        }
        if kernel == 3 && stride == 1 && padding == 1 {
            try conv3x3DirectForward(x, batch: batch, inChannels: inChannels, outChannels: outChannels,
                                     height: height, width: width, weights: weight.data,
                                     bias: perImageBias ?? UnsafePointer(bias.data),
                                     biasBatchStride: perImageBias == nil ? 0 : outChannels,
                                     y: y, accumulate: accumulate, normalize: normalize, workspace: workspace)
            return
        }
        // A strided Winograd convolution keeps no GEMM form: the rare call that accumulates
        // or takes a per-image bias packs one in the workspace (a copy of the weights).
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let gemmWeights = try packed ?? PackedMatrix(
            rows: outChannels, cols: inChannels * kernel * kernel, source: weight.data,
            rowStride: inChannels * kernel * kernel, colStride: 1,
            buffer: workspace.floats(PackedMatrix.floatCount(rows: outChannels, cols: inChannels * kernel * kernel)))
        try conv2dForward(x, batch: batch, geometry: geometry(height: height, width: width),
                          weights: gemmWeights, bias: perImageBias ?? UnsafePointer(bias.data),
                          biasBatchStride: perImageBias == nil ? 0 : outChannels,
                          y: y, accumulate: accumulate, normalize: normalize, workspace: workspace)
    }
}

/// A square-kernel transposed convolution: PyTorch's
/// `nn.ConvTranspose2d(inChannels, outChannels, kernel, stride, padding)`, weight [in, out, k, k].
final class ConvTranspose2d {
    let inChannels: Int
    let outChannels: Int
    let kernel: Int
    let stride: Int
    let padding: Int
    let weight: Parameter
    let bias: Parameter
    /// The sub-pixel GEMM form, packed only where there is no Winograd form.
    private(set) var packed: SubPixelWeights?
    /// Winograd F(2×2, 2×2) form of the four sub-pixel kernels (channels >= 8).
    private(set) var winograd: TransposedWinogradWeights?

    init(_ registry: ParameterRegistry, _ prefix: String, inChannels: Int, outChannels: Int,
         kernel: Int, stride: Int, padding: Int) throws {
        precondition(kernel == 4 && stride == 2 && padding == 1, "only ConvTranspose2d(k 4, stride 2, padding 1) is implemented")
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        // PyTorch takes fan-in from dim 1 of the [in, out, k, k] weight.
        let fanIn = outChannels * kernel * kernel
        weight = try registry.make(prefix + ".weight", [inChannels, outChannels, kernel, kernel], .uniform(fanIn: fanIn))
        bias = try registry.make(prefix + ".bias", [outChannels], .uniform(fanIn: fanIn))
    }

    func prepare(store: WeightStore? = nil) throws {
        winograd = min(inChannels, outChannels) >= Conv2d.winogradMinimumChannels
            ? try packTransposedWinogradWeights(weight.data, inChannels: inChannels, outChannels: outChannels,
                                                store: store)
            : nil
        packed = winograd == nil
            ? try packTransposedConvWeights(weight.data, inChannels: inChannels,
                                            outChannels: outChannels, kernel: kernel, store: store)
            : nil
    }

    func geometry(height: Int, width: Int) -> ConvGeometry {
        ConvGeometry(inChannels: inChannels, outChannels: outChannels, height: height, width: width,
                     kernel: kernel, stride: stride, padding: padding)
    }

    /// x [B, Cin, H, W] → y [B, Cout, 2H, 2W], image b at y + b·outputBatchStride (default packed).
    func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                 into y: UnsafeMutablePointer<Float>, outputBatchStride: Int? = nil, workspace: Workspace) throws {
        if let winograd = winograd {
            try winogradConvTranspose4x4Stride2(x, batch: batch, inChannels: inChannels, height: height, width: width,
                                                weights: winograd, bias: bias.data, y: y,
                                                outputBatchStride: outputBatchStride, workspace: workspace)
            return
        }
        try convTranspose2dForward(x, batch: batch, geometry: geometry(height: height, width: width),
                                   weights: packed!, bias: bias.data, y: y, outputBatchStride: outputBatchStride,
                                   workspace: workspace)
    }
}

// MARK: training

// The training routes: the inference's Winograd kernels (and the direct 3×3 kernel) on
// weights transformed per call (`winogradWeightsForStep` and its strided and transposed
// siblings), for the forward and for the input gradient; the weight and bias gradients
// by GEMM over im2col columns (`convBackwardTraining`). The route is a function of the
// layer and the shape only, as in inference.

extension Conv2d {
    /// Training forward on the raw weights: x [B, Cin, H, W] → y [B, Cout, Ho, Wo]
    /// (+ y when `accumulate`); `perImageBias` [B, Cout] replaces the bias when given.
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                         into y: UnsafeMutablePointer<Float>, accumulate: Bool = false,
                         perImageBias: UnsafePointer<Float>? = nil, workspace: Workspace) throws {
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let rowBias = perImageBias ?? UnsafePointer(bias.data)
        let biasStride = perImageBias == nil ? 0 : outChannels
        if usesWinograd {
            let tiles = try winogradWeightsForStep(weight.data, inChannels: inChannels, outChannels: outChannels,
                                                   tile: Conv2d.trainingTile(height: height, width: width),
                                                   inputGradient: false, workspace: workspace)
            try winogradConv3x3(x, batch: batch, inChannels: inChannels, height: height, width: width, weights: tiles,
                                bias: rowBias, biasBatchStride: biasStride, y: y, accumulate: accumulate,
                                workspace: workspace)
            return
        }
        if usesStridedWinograd && !accumulate && perImageBias == nil {
            let strided = try stridedWinogradWeightsForStep(weight.data, inChannels: inChannels,
                                                            outChannels: outChannels, workspace: workspace)
            try winogradConv4x4Stride2(x, batch: batch, inChannels: inChannels, height: height, width: width,
                                       weights: strided, bias: bias.data, y: y, workspace: workspace)
            return
        }
        if kernel == 3 && stride == 1 && padding == 1 {
            try conv3x3DirectForward(x, batch: batch, inChannels: inChannels, outChannels: outChannels,
                                     height: height, width: width, weights: weight.data, bias: rowBias,
                                     biasBatchStride: biasStride, y: y, accumulate: accumulate, workspace: workspace)
            return
        }
        try convForwardTraining(x, batch: batch, geometry: geometry(height: height, width: width), weight: weight.data,
                                bias: bias.data, perImageBias: perImageBias, y: y, accumulate: accumulate,
                                workspace: workspace)
    }

    /// The Winograd tile of a training call at height × width (F(4×4) from 12×12 up, as inference).
    static func trainingTile(height: Int, width: Int) -> WinogradTile {
        prefersLargeTiles(height: height, width: width) ? .four : .two
    }

    /// dy [B, Cout, Ho, Wo], the forward's x → weight and bias gradients (+=) and, when
    /// `dx` is given, dx [B, Cin, H, W] (=, or += with `accumulateDx`).
    func backward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                  gradients: GradientBuffer, dx: UnsafeMutablePointer<Float>?, accumulateDx: Bool = false,
                  workspace: Workspace) throws {
        let g = geometry(height: height, width: width)
        let byWinograd = usesWinograd
        let byTransposedWinograd = usesStridedWinograd && !accumulateDx && height % 2 == 0 && width % 2 == 0
        let byDirect = kernel == 3 && stride == 1 && padding == 1
        let gemmInputGradient = !(byWinograd || byTransposedWinograd || byDirect)
        // 3×3 and 1×1 weight gradients by their own kernels (Winograd, direct 3×3, direct 1×1),
        // on every kernel variant: each lane does the same operations in the same order
        // whatever the vector width, so every variant gives the same bits. The other shapes
        // (4×4 stride 2) get theirs from `convBackwardTraining`.
        let pointwise = kernel == 1 && stride == 1 && padding == 0
        let ownWeightGradient = byDirect || pointwise
        if ownWeightGradient {
            biasGradientAdd(dy, batch: batch, channels: outChannels, spatial: height * width,
                            batchStride: outChannels * height * width, db: gradients.of(bias))
            if byDirect && inChannels >= 16 && outChannels >= 8 {
                // F(4×4) for every image size: it does a quarter of the multiplies of the direct
                // kernel, and its products run on the GEMM micro-kernels (docs/KERNELS.md).
                try winogradWeightGradient3x3(dy, x: x, batch: batch, inChannels: inChannels, outChannels: outChannels,
                                              height: height, width: width, tile: .four,
                                              dWeight: gradients.of(weight), workspace: workspace)
            } else if byDirect {
                // The RGB-in and RGB-out layers: too few channels to fill the Winograd route's
                // vectors and panels.
                try conv3x3WeightGradient(dy, x: x, batch: batch, inChannels: inChannels, outChannels: outChannels,
                                          height: height, width: width, dWeight: gradients.of(weight),
                                          workspace: workspace)
            } else {
                try pointwiseWeightGradient(dy, x: x, batch: batch, inChannels: inChannels,
                                            outChannels: outChannels, spatial: height * width,
                                            dWeight: gradients.of(weight), workspace: workspace)
            }
        }
        if !ownWeightGradient || (gemmInputGradient && dx != nil) {
            try convBackwardTraining(dy, x: x, batch: batch, geometry: g, weight: weight.data,
                                     dWeight: ownWeightGradient ? nil : gradients.of(weight),
                                     dBias: ownWeightGradient ? nil : gradients.of(bias),
                                     dx: gemmInputGradient ? dx : nil, accumulateDx: accumulateDx,
                                     workspace: workspace)
        }
        guard let dx = dx, !gemmInputGradient else { return }
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let zeros = try workspace.floats(inChannels)
        zeros.update(repeating: 0, count: inChannels)
        if byWinograd {
            // dx = conv3x3(dy, flipped kernel, channels swapped)
            let tiles = try winogradWeightsForStep(weight.data, inChannels: inChannels, outChannels: outChannels,
                                                   tile: Conv2d.trainingTile(height: height, width: width),
                                                   inputGradient: true, workspace: workspace)
            try winogradConv3x3(dy, batch: batch, inChannels: outChannels, height: height, width: width,
                                weights: tiles, bias: zeros, biasBatchStride: 0, y: dx, accumulate: accumulateDx,
                                workspace: workspace)
        } else if byTransposedWinograd {
            // dx = conv_transpose2d(dy, W): W [Cout, Cin, 4, 4] read as a transposed kernel [in Cout, out Cin].
            let transposed = try transposedWinogradWeightsForStep(weight.data, inChannels: outChannels,
                                                                  outChannels: inChannels, workspace: workspace)
            try winogradConvTranspose4x4Stride2(dy, batch: batch, inChannels: outChannels, height: g.outHeight,
                                                width: g.outWidth, weights: transposed, bias: zeros, y: dx,
                                                workspace: workspace)
        } else {
            let flipped = try workspace.floats(inChannels * outChannels * 9)
            flippedKernel(weight.data, inChannels: inChannels, outChannels: outChannels, taps: 9, into: flipped)
            try conv3x3DirectForward(dy, batch: batch, inChannels: outChannels, outChannels: inChannels,
                                     height: height, width: width, weights: flipped, bias: zeros,
                                     biasBatchStride: 0, y: dx, accumulate: accumulateDx, workspace: workspace)
        }
    }
}

extension ConvTranspose2d {
    /// Training forward: x [B, Cin, H, W] → y [B, Cout, 2H, 2W], image b at y + b·outputBatchStride.
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                         into y: UnsafeMutablePointer<Float>, outputBatchStride: Int? = nil,
                         workspace: Workspace) throws {
        if usesWinograd {
            let mark = workspace.mark()
            defer { workspace.release(to: mark) }
            let transposed = try transposedWinogradWeightsForStep(weight.data, inChannels: inChannels,
                                                                  outChannels: outChannels, workspace: workspace)
            try winogradConvTranspose4x4Stride2(x, batch: batch, inChannels: inChannels, height: height, width: width,
                                                weights: transposed, bias: bias.data, y: y,
                                                outputBatchStride: outputBatchStride, workspace: workspace)
            return
        }
        try convTransposeForwardTraining(x, batch: batch, geometry: geometry(height: height, width: width),
                                         weight: weight.data, bias: bias.data, y: y, yBatchStride: outputBatchStride,
                                         workspace: workspace)
    }

    /// Whether this layer runs the Winograd F(2×2, 2×2) route (both channel counts >= 8).
    var usesWinograd: Bool { min(inChannels, outChannels) >= Conv2d.winogradMinimumChannels }

    /// dy [B, Cout, 2H, 2W] (image b at dy + b·dyBatchStride), the forward's x → weight and
    /// bias gradients (+=) and dx [B, Cin, H, W] (=).
    func backward(_ dy: UnsafePointer<Float>, dyBatchStride: Int? = nil, x: UnsafePointer<Float>, batch: Int,
                  height: Int, width: Int, gradients: GradientBuffer, dx: UnsafeMutablePointer<Float>,
                  workspace: Workspace) throws {
        let g = geometry(height: height, width: width)
        try convTransposeBackwardTraining(dy, dyBatchStride: dyBatchStride, x: x, batch: batch, geometry: g,
                                          weight: weight.data, dWeight: gradients.of(weight),
                                          dBias: gradients.of(bias), dx: usesWinograd ? nil : dx,
                                          workspace: workspace)
        guard usesWinograd else { return }
        // dx = conv2d(dy, W, stride 2, padding 1): W [Cin, Cout, 4, 4] read as a kernel [out Cin, in Cout].
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let outPlane = outChannels * 4 * height * width
        var dyDense = dy
        if let stride = dyBatchStride, stride != outPlane {
            let copy = try workspace.floats(batch * outPlane)
            for b in 0..<batch { (copy + b * outPlane).update(from: dy + b * stride, count: outPlane) }
            dyDense = UnsafePointer(copy)
        }
        let zeros = try workspace.floats(inChannels)
        zeros.update(repeating: 0, count: inChannels)
        let strided = try stridedWinogradWeightsForStep(weight.data, inChannels: outChannels, outChannels: inChannels,
                                                        workspace: workspace)
        try winogradConv4x4Stride2(dyDense, batch: batch, inChannels: outChannels, height: 2 * height,
                                   width: 2 * width, weights: strided, bias: zeros, y: dx, workspace: workspace)
    }
}
