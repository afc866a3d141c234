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
