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

/// What `GroupNorm.backward` needs from the training forward: the statistics of every
/// (image, group), [B, groups] each (the normalised values are recomputed from x).
struct GroupNormSaved {
    let mean: UnsafeMutablePointer<Float>
    let rstd: UnsafeMutablePointer<Float>
}

extension GroupNorm {
    /// Training forward: as `forward`, keeping the statistics (in the workspace, until the step ends).
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int, silu: Bool,
                         into y: UnsafeMutablePointer<Float>, workspace: Workspace) throws -> GroupNormSaved {
        let saved = GroupNormSaved(mean: try workspace.floats(batch * groups), rstd: try workspace.floats(batch * groups))
        groupNormTrainingForward(x, batch: batch, channels: channels, spatial: spatial, groups: groups,
                                 gamma: weight.data, beta: bias.data, eps: eps, silu: silu, y: y,
                                 mean: saved.mean, rstd: saved.rstd)
        return saved
    }

    /// Training forward writing the statistics into `saved` (taken by the caller).
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int, silu: Bool,
                         into y: UnsafeMutablePointer<Float>, saving saved: GroupNormSaved) {
        groupNormTrainingForward(x, batch: batch, channels: channels, spatial: spatial, groups: groups,
                                 gamma: weight.data, beta: bias.data, eps: eps, silu: silu, y: y,
                                 mean: saved.mean, rstd: saved.rstd)
    }

    /// The training forward's output again, from its input and saved statistics (the same bits).
    func recompute(_ x: UnsafePointer<Float>, batch: Int, spatial: Int, silu: Bool, saved: GroupNormSaved,
                   into y: UnsafeMutablePointer<Float>) {
        groupNormApply(x, batch: batch, channels: channels, spatial: spatial, groups: groups, gamma: weight.data,
                       beta: bias.data, silu: silu, mean: saved.mean, rstd: saved.rstd, y: y)
    }

    /// dy, the forward's x [B, C, spatial] → dx (=), weight and bias gradients (+=).
    func backward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, spatial: Int, silu: Bool,
                  saved: GroupNormSaved, gradients: GradientBuffer, dx: UnsafeMutablePointer<Float>,
                  workspace: Workspace) throws {
        try groupNormBackward(dy, x: x, batch: batch, channels: channels, spatial: spatial, groups: groups,
                              gamma: weight.data, beta: bias.data, silu: silu, mean: saved.mean, rstd: saved.rstd,
                              dx: dx, dGamma: gradients.of(weight), dBeta: gradients.of(bias), workspace: workspace)
    }
}
