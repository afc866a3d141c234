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

// MARK: training

/// What `SelfAttention.backward` needs: the GroupNorm's statistics and output, q/k/v,
/// the attention probabilities [B, heads, N, N] and the attended values (proj's input).
struct SelfAttentionSaved {
    let norm: GroupNormSaved
    let normed: UnsafeMutablePointer<Float>
    let qkv: UnsafeMutablePointer<Float>
    let probabilities: UnsafeMutablePointer<Float>
    let attended: UnsafeMutablePointer<Float>
}

extension SelfAttention {
    /// Training forward: x [B, C, H, W] → y [B, C, H, W], keeping what the backward needs.
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                         into y: UnsafeMutablePointer<Float>, workspace: Workspace) throws -> SelfAttentionSaved {
        let n = height * width
        let normed = try workspace.floats(batch * channels * n)
        let normSaved = try norm.trainingForward(x, batch: batch, spatial: n, silu: false, into: normed,
                                                 workspace: workspace)
        let qkvOut = try workspace.floats(batch * 3 * channels * n)
        try qkv.trainingForward(normed, batch: batch, height: height, width: width, into: qkvOut, workspace: workspace)
        let probabilities = try workspace.floats(batch * heads * n * n)
        let attended = try workspace.floats(batch * channels * n)
        attentionTrainingForward(qkv: qkvOut, batch: batch, channels: channels, positions: n, heads: heads,
                                 o: attended, p: probabilities)
        y.update(from: x, count: batch * channels * n)
        try proj.trainingForward(attended, batch: batch, height: height, width: width, into: y, accumulate: true,
                                 workspace: workspace)
        return SelfAttentionSaved(norm: normSaved, normed: normed, qkv: qkvOut, probabilities: probabilities,
                                  attended: attended)
    }

    /// dy [B, C, H, W] → dx [B, C, H, W] (=) and the layer's parameter gradients (+=).
    func backward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                  saved: SelfAttentionSaved, gradients: GradientBuffer, dx: UnsafeMutablePointer<Float>,
                  workspace: Workspace) throws {
        let n = height * width
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let dAttended = try workspace.floats(batch * channels * n)
        try proj.backward(dy, x: saved.attended, batch: batch, height: height, width: width, gradients: gradients,
                          dx: dAttended, workspace: workspace)
        let dQKV = try workspace.floats(batch * 3 * channels * n)
        try attentionBackward(dOut: dAttended, qkv: saved.qkv, p: saved.probabilities, batch: batch,
                              channels: channels, positions: n, heads: heads, dqkv: dQKV, workspace: workspace)
        let dNormed = dAttended  // same size, no longer needed
        try qkv.backward(dQKV, x: saved.normed, batch: batch, height: height, width: width, gradients: gradients,
                         dx: dNormed, workspace: workspace)
        try norm.backward(dNormed, x: x, batch: batch, spatial: n, silu: false, saved: saved.norm,
                          gradients: gradients, dx: dx, workspace: workspace)
        addInPlace(dx, dy, count: batch * channels * n)
    }
}
