/// Multi-head self-attention over the pixels of a feature map, with a residual:
/// `y = x + proj(attention(qkv(norm(x))))`, heads splitting the channels in order.
/// PyTorch equivalent: GroupNorm(8, C), Conv2d(C, 3C, 1), per-head softmax(qᵀk/√dh)·v,
/// Conv2d(C, C, 1).
final class SelfAttention {
    let channels: Int
    let heads: Int
    let norm: GroupNorm
    let qkv: Conv2d
    let proj: Conv2d

    init(_ registry: ParameterRegistry, _ prefix: String, channels: Int, heads: Int = 4) throws {
        self.channels = channels
        self.heads = heads
        norm = try GroupNorm(registry, prefix + ".norm", channels: channels)
        qkv = try Conv2d(registry, prefix + ".qkv", inChannels: channels, outChannels: 3 * channels, kernel: 1)
        proj = try Conv2d(registry, prefix + ".proj", inChannels: channels, outChannels: channels, kernel: 1)
    }

    func prepare(store: WeightStore? = nil) throws {
        try qkv.prepare(store: store)
        try proj.prepare(store: store)
    }

    /// x [B, C, H, W] → y [B, C, H, W]
    func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                 into y: UnsafeMutablePointer<Float>, workspace: Workspace) throws {
        let n = height * width
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let normed = try workspace.floats(batch * channels * n)
        norm.forward(x, batch: batch, spatial: n, silu: false, into: normed)
        let qkvOut = try workspace.floats(batch * 3 * channels * n)
        try qkv.forward(normed, batch: batch, height: height, width: width, into: qkvOut, workspace: workspace)
        let attended = normed // normed is no longer needed and has the right size
        try attentionBatched(qkv: qkvOut, batch: batch, channels: channels, positions: n, heads: heads,
                             o: attended, workspace: workspace)
        y.update(from: x, count: batch * channels * n)
        try proj.forward(attended, batch: batch, height: height, width: width, into: y,
                         accumulate: true, workspace: workspace)
    }
}
