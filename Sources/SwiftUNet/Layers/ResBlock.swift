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
            y.update(from: x, count: batch * outChannels * spatial)
        }
        try conv2.forward(h, batch: batch, height: height, width: width, into: y,
                          accumulate: true, normalizedBy: norm2, workspace: workspace)
    }
}

// MARK: training

/// What `ResBlock.backward` needs: the input of each convolution (after its GroupNorm and
/// SiLU), conv1's output, and both GroupNorms' statistics. The block's input x and the
/// time embedding are kept by the caller.
struct ResBlockSaved {
    let norm1: GroupNormSaved
    let normed1: UnsafeMutablePointer<Float>
    let hidden: UnsafeMutablePointer<Float>
    let norm2: GroupNormSaved
    let normed2: UnsafeMutablePointer<Float>
}

extension ResBlock {
    /// Training forward: x [B, Cin, H, W], temb [B, T] → y [B, Cout, H, W], keeping what
    /// the backward needs in the workspace (until the step ends).
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                         temb: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
                         workspace: Workspace) throws -> ResBlockSaved {
        let spatial = height * width
        let normed1 = try workspace.floats(batch * inChannels * spatial)
        let norm1Saved = try norm1.trainingForward(x, batch: batch, spatial: spatial, silu: true, into: normed1,
                                                   workspace: workspace)
        let bias1 = try workspace.floats(batch * outChannels)
        timeProjection.forward(temb, batch: batch, into: bias1)
        for b in 0..<batch {
            for c in 0..<outChannels { bias1[b * outChannels + c] += conv1.bias.data[c] }
        }
        let hidden = try workspace.floats(batch * outChannels * spatial)
        try conv1.trainingForward(normed1, batch: batch, height: height, width: width, into: hidden,
                                  perImageBias: bias1, workspace: workspace)
        let normed2 = try workspace.floats(batch * outChannels * spatial)
        let norm2Saved = try norm2.trainingForward(hidden, batch: batch, spatial: spatial, silu: true, into: normed2,
                                                   workspace: workspace)
        if let skip = skip {
            try skip.trainingForward(x, batch: batch, height: height, width: width, into: y, workspace: workspace)
        } else {
            y.update(from: x, count: batch * outChannels * spatial)
        }
        try conv2.trainingForward(normed2, batch: batch, height: height, width: width, into: y, accumulate: true,
                                  workspace: workspace)
        return ResBlockSaved(norm1: norm1Saved, normed1: normed1, hidden: hidden, norm2: norm2Saved, normed2: normed2)
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
        try conv2.backward(dy, x: saved.normed2, batch: batch, height: height, width: width, gradients: gradients,
                           dx: dNormed2, workspace: workspace)
        let dHidden = try workspace.floats(batch * outChannels * spatial)
        try norm2.backward(dNormed2, x: saved.hidden, batch: batch, spatial: spatial, silu: true, saved: saved.norm2,
                           gradients: gradients, dx: dHidden, workspace: workspace)
        // The time projection's output is a per-image bias of conv1: its gradient is dHidden summed over pixels.
        let dProjection = try workspace.floats(batch * outChannels)
        for b in 0..<batch {
            for c in 0..<outChannels {
                let row = dHidden + (b * outChannels + c) * spatial
                var s: Float = 0
                for i in 0..<spatial { s += row[i] }
                dProjection[b * outChannels + c] = s
            }
        }
        let dTemb = try workspace.floats(batch * timeProjection.inFeatures)
        timeProjection.backward(dProjection, x: temb, batch: batch, gradients: gradients, dx: dTemb)
        for i in 0..<(batch * timeProjection.inFeatures) { dtemb[i] += dTemb[i] }
        let dNormed1 = try workspace.floats(batch * inChannels * spatial)
        try conv1.backward(dHidden, x: saved.normed1, batch: batch, height: height, width: width, gradients: gradients,
                           dx: dNormed1, workspace: workspace)
        try norm1.backward(dNormed1, x: x, batch: batch, spatial: spatial, silu: true, saved: saved.norm1,
                           gradients: gradients, dx: dx, workspace: workspace)
        if let skip = skip {
            try skip.backward(dy, x: x, batch: batch, height: height, width: width, gradients: gradients, dx: dx,
                              accumulateDx: true, workspace: workspace)
        } else {
            for i in 0..<(batch * inChannels * spatial) { dx[i] += dy[i] }
        }
    }
}
