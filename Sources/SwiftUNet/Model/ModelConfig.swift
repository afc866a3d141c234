/// The configuration of a `DiffusionModel` (docs/model.md section 1).
public struct ModelConfig: Equatable, CustomStringConvertible {
    public var imageSize: Int
    public var channels: Int
    public var hiddenDims: [Int]
    public var timeDim: Int

    /// The largest channel count, image size or time dimension accepted; far
    /// beyond any model this library is for, small enough that sizes cannot overflow.
    public static let maximumDimension = 1 << 16

    public init(imageSize: Int, channels: Int, hiddenDims: [Int] = [32, 64, 128], timeDim: Int = 128) {
        self.imageSize = imageSize
        self.channels = channels
        self.hiddenDims = hiddenDims
        self.timeDim = timeDim
    }

    /// Number of down (and up) blocks, L = len(hiddenDims) - 1.
    public var levels: Int { hiddenDims.count - 1 }

    /// Every forward's height and width must be a multiple of this, 2^L.
    public var sizeMultiple: Int { 1 << levels }

    public var description: String {
        "DiffusionModel(image_size=\(imageSize), channels=\(channels), hidden_dims=\(hiddenDims), time_dim=\(timeDim))"
    }

    /// Throws `invalidArgument` naming the first field outside docs/model.md's valid configurations.
    public func validate() throws {
        func fail(_ m: String) -> SwiftUNetError { .invalidArgument(m) }
        if hiddenDims.count < 2 {
            throw fail("hidden_dims must have at least 2 entries, got \(hiddenDims.count)")
        }
        if hiddenDims.count > 16 {
            throw fail("hidden_dims may have at most 16 entries, got \(hiddenDims.count)")
        }
        for (i, d) in hiddenDims.enumerated() where d <= 0 || d % 8 != 0 || d > ModelConfig.maximumDimension {
            throw fail("hidden_dims[\(i)] must be a positive multiple of 8 (at most \(ModelConfig.maximumDimension)), got \(d)")
        }
        if hiddenDims[hiddenDims.count - 1] % 4 != 0 {
            throw fail("hidden_dims[-1] must be divisible by 4 (attention heads), got \(hiddenDims.last!)")
        }
        if channels < 1 || channels > ModelConfig.maximumDimension {
            throw fail("channels must be between 1 and \(ModelConfig.maximumDimension), got \(channels)")
        }
        if timeDim < 4 || timeDim % 2 != 0 || timeDim > ModelConfig.maximumDimension {
            throw fail("time_dim must be even, at least 4 and at most \(ModelConfig.maximumDimension), got \(timeDim)")
        }
        if imageSize <= 0 || imageSize % sizeMultiple != 0 || imageSize > ModelConfig.maximumDimension {
            throw fail("image_size must be a positive multiple of 2**\(levels) = \(sizeMultiple) (at most \(ModelConfig.maximumDimension)), got \(imageSize)")
        }
    }
}
