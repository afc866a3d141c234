/// The residual block with time injection:
/// `h = conv1(silu(norm1(x))) + time_proj(temb)`, `y = conv2(silu(norm2(h))) + skip(x)`,
/// where `skip` is a 1×1 Conv2d when the channel count changes and the identity otherwise.
final class ResBlock {
    let inChannels: Int
    let outChannels: Int
    let norm1: GroupNorm
    let conv1: Conv2d
    let timeProjection: Linear
    let norm2: GroupNorm
    let conv2: Conv2d
    let skip: Conv2d?

    init(_ registry: ParameterRegistry, _ prefix: String, inChannels: Int, outChannels: Int, timeDim: Int) throws {
        self.inChannels = inChannels
        self.outChannels = outChannels
        norm1 = try GroupNorm(registry, prefix + ".norm1", channels: inChannels)
        conv1 = try Conv2d(registry, prefix + ".conv1", inChannels: inChannels, outChannels: outChannels, kernel: 3, padding: 1)
        timeProjection = try Linear(registry, prefix + ".time_proj", inFeatures: timeDim, outFeatures: outChannels)
        norm2 = try GroupNorm(registry, prefix + ".norm2", channels: outChannels)
        conv2 = try Conv2d(registry, prefix + ".conv2", inChannels: outChannels, outChannels: outChannels, kernel: 3, padding: 1)
        skip = inChannels == outChannels
            ? nil
            : try Conv2d(registry, prefix + ".skip", inChannels: inChannels, outChannels: outChannels, kernel: 1)
    }

    /// Tells the 3×3 convolutions the image size they usually see (picks Winograd tiles).
    func setExpectedSpatialSize(_ size: Int) {
        conv1.expectedSpatialSize = size
        conv2.expectedSpatialSize = size
    }

    func prepare(store: WeightStore? = nil) throws {
        try conv1.prepare(store: store)
        try conv2.prepare(store: store)
        try skip?.prepare(store: store)
    }

    /// x [B, Cin, H, W], temb [B, T] → y [B, Cout, H, W]
    func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                 temb: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
                 workspace: Workspace) throws {
        let spatial = height * width
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }

        // The time projection joins conv1's bias: one per-image bias vector.
        let bias1 = try workspace.floats(batch * outChannels)
        timeProjection.forward(temb, batch: batch, into: bias1)
        for b in 0..<batch {
            for c in 0..<outChannels { bias1[b * outChannels + c] += conv1.bias.data[c] }
        }

        // GroupNorm + SiLU run inside each convolution's input padding pass (no normed copies).
        let h = try workspace.floats(batch * outChannels * spatial)
        try conv1.forward(x, batch: batch, height: height, width: width, into: h,
                          perImageBias: bias1, normalizedBy: norm1, workspace: workspace)

        // y starts as the skip path; conv2 then accumulates onto it.
        if let skip = skip {
            try skip.forward(x, batch: batch, height: height, width: width, into: y, workspace: workspace)
        } else {
            copyFloats(y, from: x, count: batch * outChannels * spatial)
        }
        try conv2.forward(h, batch: batch, height: height, width: width, into: y,
                          accumulate: true, normalizedBy: norm2, workspace: workspace)
    }
}

// MARK: training

/// What `ResBlock.backward` needs besides the block's input x and the time embedding (kept
/// by the caller): conv1's output and both GroupNorms' statistics. The normalised inputs
/// of the convolutions are recomputed from these in the backward (the same bits), so a
/// block keeps one activation instead of three.
struct ResBlockSaved {
    let norm1: GroupNormSaved
    let hidden: UnsafeMutablePointer<Float>
    let norm2: GroupNormSaved
}

extension ResBlock {
    /// Training forward: x [B, Cin, H, W], temb [B, T] → y [B, Cout, H, W], keeping what
    /// the backward needs in the workspace (until the step ends).
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                         temb: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
                         workspace: Workspace) throws -> ResBlockSaved {
        let spatial = height * width
        let norm1Saved = GroupNormSaved(mean: try workspace.floats(batch * norm1.groups),
                                        rstd: try workspace.floats(batch * norm1.groups))
        let norm2Saved = GroupNormSaved(mean: try workspace.floats(batch * norm2.groups),
                                        rstd: try workspace.floats(batch * norm2.groups))
        let hidden = try workspace.floats(batch * outChannels * spatial)
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let normed1 = try workspace.floats(batch * inChannels * spatial)
        norm1.trainingForward(x, batch: batch, spatial: spatial, silu: true, into: normed1, saving: norm1Saved)
        let bias1 = try workspace.floats(batch * outChannels)
        timeProjection.forward(temb, batch: batch, into: bias1)
        for b in 0..<batch {
            for c in 0..<outChannels { bias1[b * outChannels + c] += conv1.bias.data[c] }
        }
        try conv1.trainingForward(normed1, batch: batch, height: height, width: width, into: hidden,
                                  perImageBias: bias1, workspace: workspace)
        workspace.release(to: mark)
        let normed2 = try workspace.floats(batch * outChannels * spatial)
        norm2.trainingForward(hidden, batch: batch, spatial: spatial, silu: true, into: normed2, saving: norm2Saved)
        if let skip = skip {
            try skip.trainingForward(x, batch: batch, height: height, width: width, into: y, workspace: workspace)
        } else {
            copyFloats(y, from: x, count: batch * outChannels * spatial)
        }
        try conv2.trainingForward(normed2, batch: batch, height: height, width: width, into: y, accumulate: true,
                                  workspace: workspace)
        return ResBlockSaved(norm1: norm1Saved, hidden: hidden, norm2: norm2Saved)
    }

    /// dy [B, Cout, H, W] → dx [B, Cin, H, W] (=), dtemb [B, T] (+=) and the block's
    /// parameter gradients (+=). x and temb are the forward's inputs.
    func backward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                  temb: UnsafePointer<Float>, saved: ResBlockSaved, gradients: GradientBuffer,
                  dx: UnsafeMutablePointer<Float>, dtemb: UnsafeMutablePointer<Float>,
                  workspace: Workspace) throws {
        let spatial = height * width
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let dNormed2 = try workspace.floats(batch * outChannels * spatial)
        let normed = try workspace.floats(batch * max(inChannels, outChannels) * spatial)
        norm2.recompute(saved.hidden, batch: batch, spatial: spatial, silu: true, saved: saved.norm2, into: normed)
        try conv2.backward(dy, x: normed, batch: batch, height: height, width: width, gradients: gradients,
                           dx: dNormed2, workspace: workspace)
        let dHidden = try workspace.floats(batch * outChannels * spatial)
        try norm2.backward(dNormed2, x: saved.hidden, batch: batch, spatial: spatial, silu: true, saved: saved.norm2,
                           gradients: gradients, dx: dHidden, workspace: workspace)
        // The time projection's output is a per-image bias of conv1: its gradient is dHidden summed over pixels.
        let dProjection = try workspace.floats(batch * outChannels)
        ThreadPool.shared.parallelFor(batch * outChannels) { bc in
            dProjection[bc] = laneSum(dHidden + bc * spatial, count: spatial)
        }
        let dTemb = try workspace.floats(batch * timeProjection.inFeatures)
        timeProjection.backward(dProjection, x: temb, batch: batch, gradients: gradients, dx: dTemb)
        for i in 0..<(batch * timeProjection.inFeatures) { dtemb[i] += dTemb[i] }
        let dNormed1 = try workspace.floats(batch * inChannels * spatial)
        norm1.recompute(x, batch: batch, spatial: spatial, silu: true, saved: saved.norm1, into: normed)
        try conv1.backward(dHidden, x: normed, batch: batch, height: height, width: width, gradients: gradients,
                           dx: dNormed1, workspace: workspace)
        try norm1.backward(dNormed1, x: x, batch: batch, spatial: spatial, silu: true, saved: saved.norm1,
                           gradients: gradients, dx: dx, workspace: workspace)
        if let skip = skip {
            try skip.backward(dy, x: x, batch: batch, height: height, width: width, gradients: gradients, dx: dx,
                              accumulateDx: true, workspace: workspace)
        } else {
            addInPlace(dx, dy, count: batch * inChannels * spatial)
        }
    }
}
