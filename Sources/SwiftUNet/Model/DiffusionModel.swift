/// The diffusion U-Net of docs/model.md: predicts the noise in images `x` [B, C, H, W]
/// at integer timesteps `t` [B].
///
/// PyTorch equivalent: the `DiffusionModel` module whose state_dict has the
/// names and shapes of `parameters` (time_mlp, init_conv, down_blocks,
/// bottleneck, up_blocks, out_norm, out_conv). Forward calls may run on any
/// number of threads at once; weight updates wait for them.
public final class DiffusionModel {
    public let config: ModelConfig
    /// Every weight, in state_dict order.
    public let parameters: [Parameter]

    let timeEmbedding: TimeEmbedding
    let initConv: Conv2d
    let downBlocks: [DownBlock]
    let middleIn: ResBlock
    let attention: SelfAttention
    let middleOut: ResBlock
    let upBlocks: [UpBlock]
    let outNorm: GroupNorm
    let outConv: Conv2d

    let weightsLock = ReadWriteLock()
    private let workspacesLock = Mutex()
    /// Set when a training step changed the raw weights: the kernels' packed forms are
    /// rebuilt before the next forward (`refreshPackedWeights`), not after every step.
    private var packedWeightsStale = false
    private var idleWorkspaces: [Workspace] = []
    /// The stores the packed weights were carved from (changed under the write lock).
    private var weightStores: [WeightStore] = []
    /// The largest `estimatedWorkspaceBytes` a forward has completed with (see `workspaceIsProven`).
    private var provenWorkspaceBytes = 0.0

    /// Builds the model with PyTorch's default initialisation drawn from SplitMix64(seed).
    public init(imageSize: Int, channels: Int, hiddenDims: [Int] = [32, 64, 128], timeDim: Int = 128,
                seed: UInt64 = 0) throws {
        let config = ModelConfig(imageSize: imageSize, channels: channels, hiddenDims: hiddenDims, timeDim: timeDim)
        try config.validate()
        self.config = config
        let d = hiddenDims, levels = config.levels, t = timeDim
        let registry = ParameterRegistry()
        timeEmbedding = try TimeEmbedding(registry, "time_mlp", dim: t)
        initConv = try Conv2d(registry, "init_conv", inChannels: channels, outChannels: d[0], kernel: 3, padding: 1)
        downBlocks = try (0..<levels).map {
            try DownBlock(registry, "down_blocks.\($0)", inChannels: d[$0], outChannels: d[$0 + 1], timeDim: t)
        }
        middleIn = try ResBlock(registry, "bottleneck.res1", inChannels: d[levels], outChannels: d[levels], timeDim: t)
        attention = try SelfAttention(registry, "bottleneck.attn", channels: d[levels], heads: 4)
        middleOut = try ResBlock(registry, "bottleneck.res2", inChannels: d[levels], outChannels: d[levels], timeDim: t)
        upBlocks = try (0..<levels).map { j in
            let i = levels - 1 - j
            return try UpBlock(registry, "up_blocks.\(j)", channels: d[i + 1], outChannels: d[i], timeDim: t)
        }
        outNorm = try GroupNorm(registry, "out_norm", channels: d[0])
        outConv = try Conv2d(registry, "out_conv", inChannels: d[0], outChannels: channels, kernel: 3, padding: 1)
        parameters = registry.parameters
        // Each level's convolutions learn the size they will usually see at imageSize.
        for (i, block) in downBlocks.enumerated() { block.res.setExpectedSpatialSize(imageSize >> i) }
        middleIn.setExpectedSpatialSize(imageSize >> levels)
        middleOut.setExpectedSpatialSize(imageSize >> levels)
        for (j, block) in upBlocks.enumerated() { block.res.setExpectedSpatialSize(imageSize >> (levels - 1 - j)) }

        var rng = SplitMix64(seed: seed)
        for p in parameters { p.initialize(using: &rng) }
        try prepare()
    }

    /// Total number of weights.
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    public func parameter(named name: String) -> Parameter? {
        parameters.first { $0.name == name }
    }

    /// Repacks every layer's weights for the kernels, all into one new `WeightStore` (the
    /// previous ones go with the last of the matrices packed into them).
    func prepare() throws {
        let store = WeightStore()
        defer { weightStores = [store] }
        try initConv.prepare(store: store)
        for b in downBlocks { try b.prepare(store: store) }
        try middleIn.prepare(store: store)
        try attention.prepare(store: store)
        try middleOut.prepare(store: store)
        for b in upBlocks { try b.prepare(store: store) }
        try outConv.prepare(store: store)
    }

    /// The 3×3 convolutions with the height × width each sees in a forward at that size.
    private func forEachThreeByThree(height: Int, width: Int, _ body: (Conv2d, Int, Int) throws -> Void) rethrows {
        let levels = config.levels
        try body(initConv, height, width)
        for (i, block) in downBlocks.enumerated() {
            try body(block.res.conv1, height >> i, width >> i)
            try body(block.res.conv2, height >> i, width >> i)
        }
        try body(middleIn.conv1, height >> levels, width >> levels)
        try body(middleIn.conv2, height >> levels, width >> levels)
        try body(middleOut.conv1, height >> levels, width >> levels)
        try body(middleOut.conv2, height >> levels, width >> levels)
        for (j, block) in upBlocks.enumerated() {
            try body(block.res.conv1, height >> (levels - 1 - j), width >> (levels - 1 - j))
            try body(block.res.conv2, height >> (levels - 1 - j), width >> (levels - 1 - j))
        }
        try body(outConv, height, width)
    }

    /// Prepares the F(2×2) Winograd weights a forward at height × width runs and the model
    /// does not hold yet (layers whose expected size runs F(4×4) tiles get them only once
    /// a call at a smaller size needs them; from then on they are kept). Memory grows at
    /// most once per layer, not per call.
    func preparePackedForms(height: Int, width: Int) throws {
        var missing = false
        weightsLock.withReadLock {
            forEachThreeByThree(height: height, width: width) { conv, h, w in
                if conv.needsSmallTiles(height: h, width: w) { missing = true }
            }
        }
        guard missing else { return }
        try weightsLock.withWriteLock {
            let store = WeightStore()
            try forEachThreeByThree(height: height, width: width) { conv, h, w in
                if conv.needsSmallTiles(height: h, width: w) { try conv.prepareSmallTiles(store: store) }
            }
            weightStores.append(store)
        }
    }

    /// Bytes of the raw weights (`parameterTotal` floats, one tensor per `Parameter`).
    public var parameterBytes: Int { parameterCount * MemoryLayout<Float>.stride }

    /// Bytes of the kernels' packed weights (GEMM panels, Winograd-transformed kernels) the
    /// model holds: every block carved from its weight stores, padding included.
    public var packedWeightBytes: Int {
        weightsLock.withReadLock { weightStores.reduce(0) { $0 + $1.usedBytes } }
    }

    /// Replaces all weights at once from `sources[i]` (parameter i's values, state_dict
    /// order). Values must be finite; on any error the model keeps its previous weights.
    public func setParameters(_ sources: [UnsafePointer<Float>]) throws {
        guard sources.count == parameters.count else {
            throw SwiftUNetError.invalidArgument("expected \(parameters.count) parameter tensors, got \(sources.count)")
        }
        for (p, src) in zip(parameters, sources) {
            for i in 0..<p.count where !src[i].isFinite {
                throw SwiftUNetError.invalidArgument("parameter \(p.name) has a non-finite value at flat index \(i)")
            }
        }
        try weightsLock.withWriteLock {
            let previous = parameters.map { $0.values }
            for (p, src) in zip(parameters, sources) { p.data.update(from: src, count: p.count) }
            do {
                try prepare()
                workspacesLock.withLock { packedWeightsStale = false }
            } catch {
                for (p, old) in zip(parameters, previous) {
                    old.withUnsafeBufferPointer { p.data.update(from: $0.baseAddress!, count: p.count) }
                }
                try? prepare()
                throw error
            }
        }
    }

    /// Checks a forward's shapes and timesteps against the configuration.
    public func validateInput(batch: Int, channels: Int, height: Int, width: Int,
                              timesteps: UnsafePointer<Int64>?) throws {
        try validateShape(batch: batch, channels: channels, height: height, width: width)
        if batch > 0 {
            guard let t = timesteps else { throw SwiftUNetError.invalidArgument("timesteps must not be NULL") }
            for i in 0..<batch where t[i] < 0 || t[i] > DiffusionModel.maximumTimestep {
                throw SwiftUNetError.invalidArgument("timesteps[\(i)] must be in [0, 2**53], got \(t[i])")
            }
        }
    }

    /// Checks the shape of an image batch [batch, channels, height, width] against the configuration.
    public func validateShape(batch: Int, channels: Int, height: Int, width: Int, name: String = "x") throws {
        let m = config.sizeMultiple
        if batch < 0 { throw SwiftUNetError.invalidArgument("batch must be >= 0, got \(batch)") }
        if channels != config.channels {
            throw SwiftUNetError.invalidArgument("\(name) must have \(config.channels) channels, got \(channels)")
        }
        if height <= 0 || height % m != 0 || height > ModelConfig.maximumDimension {
            throw SwiftUNetError.invalidArgument("\(name) height must be a positive multiple of \(m), got \(height)")
        }
        if width <= 0 || width % m != 0 || width > ModelConfig.maximumDimension {
            throw SwiftUNetError.invalidArgument("\(name) width must be a positive multiple of \(m), got \(width)")
        }
    }

    /// An upper estimate of the activation memory of a forward, in bytes, used to
    /// refuse absurd inputs before anything is allocated.
    public func estimatedWorkspaceBytes(batch: Int, height: Int, width: Int) -> Double {
        let d = config.hiddenDims   // read in place: this runs on every forward
        var spatial = Double(height) * Double(width)
        var perImage = 0.0, scratch = 0.0
        for i in 0..<d.count {
            let widest = Double(max(d[i], i + 1 < d.count ? d[i + 1] : d[i]))
            perImage += 40 * widest * spatial
            scratch = max(scratch, 18 * widest * spatial)
            spatial /= 4
        }
        let n = spatial * 4
        scratch = max(scratch, n * n + n * Double(d.last!))
        return 4 * (Double(batch) * perImage + scratch) + 4 * Double(batch) * Double(config.timeDim) * 16
    }

    /// Whether a forward needing `bytes` (an `estimatedWorkspaceBytes`) has already run:
    /// its arena is then held, so callers can skip checking free memory again (reading
    /// /proc on every call would cost system calls and allocations on the hot path).
    public func workspaceIsProven(_ bytes: Double) -> Bool {
        workspacesLock.withLock { bytes <= provenWorkspaceBytes }
    }

    /// Records that a forward needing `bytes` completed.
    public func noteWorkspaceProven(_ bytes: Double) {
        workspacesLock.withLock { provenWorkspaceBytes = max(provenWorkspaceBytes, bytes) }
    }

    /// Timesteps up to 2^53 convert to float64 exactly.
    public static let maximumTimestep: Int64 = 1 << 53

    /// eps = model(x, t): x [batch, C, height, width], timesteps [batch] → out, same shape as x.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int,
                        timesteps: UnsafePointer<Int64>, out: UnsafeMutablePointer<Float>) throws {
        try validateInput(batch: batch, channels: channels, height: height, width: width, timesteps: timesteps)
        if batch == 0 { return }
        try refreshPackedWeights()
        try preparePackedForms(height: height, width: width)
        try weightsLock.withReadLock {
            let pool = ThreadPool.shared
            let threads = pool.threadsFor(batch)
            // Batches of at least one image per thread: each thread runs the whole forward
            // on its own contiguous share of the images (one parallel region instead of
            // ~60 small ones); the remainder then runs with the kernels' own parallelism.
            // An image's arithmetic is the same in every share, so results do not change.
            let share = threads > 1 ? batch / threads : 0
            if share > 0 {
                try runSplitOverImages(x, shares: threads, share: share, height: height, width: width,
                                       timesteps: timesteps, out: out)
            }
            let done = share * threads
            if done < batch {
                let perImage = config.channels * height * width
                let workspace = takeWorkspace()
                defer { giveBack(workspace) }
                defer { try? workspace.reset() }
                try run(x + done * perImage, batch: batch - done, height: height, width: width,
                        timesteps: timesteps + done, out: out + done * perImage, workspace: workspace)
            }
        }
    }

    /// Images 0..<shares·share, one contiguous share of `share` images per task, each
    /// share's forward on its own workspace (the kernels' parallel regions inside a
    /// task run inline on that task's thread).
    private func runSplitOverImages(_ x: UnsafePointer<Float>, shares: Int, share: Int, height: Int, width: Int,
                                    timesteps: UnsafePointer<Int64>, out: UnsafeMutablePointer<Float>) throws {
        let perImage = config.channels * height * width
        try withUnsafeTemporaryAllocation(of: Workspace.self, capacity: shares) { workspaces in
            for i in 0..<shares { (workspaces.baseAddress! + i).initialize(to: takeWorkspace()) }
            defer {
                for i in 0..<shares { giveBack((workspaces.baseAddress! + i).move()) }
            }
            try withUnsafeTemporaryAllocation(of: Error?.self, capacity: shares) { failures in
                failures.initialize(repeating: nil)
                defer { _ = failures.deinitialize() }
                ThreadPool.shared.parallelFor(shares, maxThreads: shares,
                                              ImageShareTasks(model: self, x: x, out: out, timesteps: timesteps,
                                                              share: share, perImage: perImage, height: height,
                                                              width: width, workspaces: workspaces, failures: failures))
                if let failure = failures.first(where: { $0 != nil }) { throw failure! }
            }
        }
    }

    /// Convenience forward on tensors: x [B, C, H, W], one timestep per image.
    public func forward(_ x: Tensor, timesteps: [Int]) throws -> Tensor {
        guard x.shape.count == 4 else {
            throw SwiftUNetError.invalidArgument("x must have 4 dimensions [B, C, H, W], got \(x.shape)")
        }
        guard timesteps.count == x.shape[0] else {
            throw SwiftUNetError.invalidArgument("timesteps must have \(x.shape[0]) entries, got \(timesteps.count)")
        }
        let out = try Tensor(zeros: x.shape)
        let t = timesteps.map { Int64($0) }
        try t.withUnsafeBufferPointer { tp in
            try forward(x.data, batch: x.shape[0], channels: x.shape[1], height: x.shape[2], width: x.shape[3],
                        timesteps: tp.baseAddress ?? UnsafePointer(bitPattern: 8)!, out: out.data)
        }
        return out
    }

    /// Changes the raw weights in place (a training step), under the write lock; the packed
    /// forms are rebuilt before the next forward.
    func updateWeights(_ body: () throws -> Void) rethrows {
        try weightsLock.withWriteLock {
            try body()
            workspacesLock.withLock { packedWeightsStale = true }
        }
    }

    /// Rebuilds the packed weights if a training step changed the raw ones.
    func refreshPackedWeights() throws {
        guard workspacesLock.withLock({ packedWeightsStale }) else { return }
        try weightsLock.withWriteLock { try refreshPackedWeightsLocked() }
    }

    /// `refreshPackedWeights` with the write lock held.
    private func refreshPackedWeightsLocked() throws {
        guard workspacesLock.withLock({ packedWeightsStale }) else { return }
        try prepare()
        workspacesLock.withLock { packedWeightsStale = false }
    }

    func takeWorkspace() -> Workspace {
        workspacesLock.withLock { idleWorkspaces.popLast() } ?? Workspace()
    }

    func giveBack(_ w: Workspace) {
        workspacesLock.withLock { idleWorkspaces.append(w) }
    }

    /// Bytes held by idle activation arenas (for memory reports).
    public var arenaBytes: Int {
        workspacesLock.withLock { idleWorkspaces.reduce(0) { $0 + $1.reservedBytes } }
    }

    fileprivate func run(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                     timesteps: UnsafePointer<Int64>, out: UnsafeMutablePointer<Float>,
                     workspace ws: Workspace) throws {
        let d = config.hiddenDims, levels = config.levels
        let temb = try ws.floats(batch * config.timeDim)
        try timeEmbedding.forward(timesteps, batch: batch, into: temb, workspace: ws)

        var h = try ws.floats(batch * d[0] * height * width)
        try initConv.forward(x, batch: batch, height: height, width: width, into: h, workspace: ws)

        // At batch 1 each skip is written straight into the second half of its decoder level's
        // concatenation [u, skip], which the decoder then fills in front of it instead of
        // copying the skip (larger batches interleave the images, so they copy).
        let skipsInPlace = batch == 1
        // The skip pointers live on the stack: no heap allocation per forward.
        try withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<Float>.self, capacity: levels) { skips in
            var hh = height, ww = width
            for (i, block) in downBlocks.enumerated() {
                let plane = d[i + 1] * hh * ww
                let skip = skipsInPlace ? try ws.floats(2 * plane) + plane : try ws.floats(batch * plane)
                let next = try ws.floats(batch * d[i + 1] * (hh / 2) * (ww / 2))
                try block.forward(h, batch: batch, height: hh, width: ww, temb: temb, skip: skip, into: next, workspace: ws)
                skips[i] = skip
                h = next
                hh /= 2
                ww /= 2
            }

            let dl = d[levels]
            let mid1 = try ws.floats(batch * dl * hh * ww)
            try middleIn.forward(h, batch: batch, height: hh, width: ww, temb: temb, into: mid1, workspace: ws)
            let mid2 = try ws.floats(batch * dl * hh * ww)
            try attention.forward(mid1, batch: batch, height: hh, width: ww, into: mid2, workspace: ws)
            h = try ws.floats(batch * dl * hh * ww)
            try middleOut.forward(mid2, batch: batch, height: hh, width: ww, temb: temb, into: h, workspace: ws)

            for (j, block) in upBlocks.enumerated() {
                let i = levels - 1 - j
                let next = try ws.floats(batch * d[i] * (hh * 2) * (ww * 2))
                try block.forward(h, batch: batch, height: hh, width: ww, temb: temb, skip: skips[i],
                                  skipInPlace: skipsInPlace, into: next, workspace: ws)
                h = next
                hh *= 2
                ww *= 2
            }
        }

        try outConv.forward(h, batch: batch, height: height, width: width, into: out, normalizedBy: outNorm, workspace: ws)
    }
}

/// The tasks of `DiffusionModel.runSplitOverImages`: task i runs the whole forward of
/// images i·share ..< (i+1)·share on workspace i, keeping any error for the caller.
private struct ImageShareTasks: ParallelTasks {
    let model: DiffusionModel
    let x: UnsafePointer<Float>
    let out: UnsafeMutablePointer<Float>
    let timesteps: UnsafePointer<Int64>
    let share: Int
    let perImage: Int
    let height: Int
    let width: Int
    let workspaces: UnsafeMutableBufferPointer<Workspace>
    let failures: UnsafeMutableBufferPointer<Error?>

    func run(_ task: Int, thread: Int) {
        let ws = workspaces[task]
        let b0 = task * share
        do {
            try model.run(x + b0 * perImage, batch: share, height: height, width: width,
                          timesteps: timesteps + b0, out: out + b0 * perImage, workspace: ws)
        } catch {
            failures[task] = error
        }
        try? ws.reset()
    }
}
