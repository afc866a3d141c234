/// GroupNorm with a per-channel affine, optionally followed by SiLU:
/// PyTorch's `nn.GroupNorm(groups, channels, eps=1e-5)` (then `F.silu`).
final class GroupNorm {
    let groups: Int
    let channels: Int
    let eps: Float = 1e-5
    let weight: Parameter
    let bias: Parameter

    init(_ registry: ParameterRegistry, _ prefix: String, groups: Int = 8, channels: Int) throws {
        self.groups = groups
        self.channels = channels
        weight = try registry.make(prefix + ".weight", [channels], .ones)
        bias = try registry.make(prefix + ".bias", [channels], .zeros)
    }

    /// x [B, C, H, W] → y [B, C, H, W]
    func forward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int, silu: Bool,
                 into y: UnsafeMutablePointer<Float>) {
        groupNormForward(x, batch: batch, channels: channels, spatial: spatial, groups: groups,
                         gamma: weight.data, beta: bias.data, eps: eps, silu: silu, y: y)
    }
}
