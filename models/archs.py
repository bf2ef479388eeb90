"""The backbones' channel counts and the shapes that follow from them, without importing Paddle
(model-file checks and the light deployment path read them): layer1, layer2, layer3 of each
ResNet."""

CHANNELS = {
    "resnet18": (64, 128, 256),
    "wide_resnet50_2": (256, 512, 1024),
}


def feature_dim(arch):
    """Number of channels F of the concatenated embedding of ``arch``."""
    return sum(CHANNELS[arch])


def patchcore_dim(channels, dim):
    """PatchCore's D: ``dim`` (--patchcore_dim), or layer2 + layer3's channels if fewer (an
    average pooling to more dimensions than it is given adds nothing)."""
    return int(min(int(dim), int(channels[1]) + int(channels[2])))


def patchcore_grid(input_hw):
    """layer2's patch grid of an H x W input: ceil(H/8) x ceil(W/8) (stride-2 conv1, max-pool
    and layer2, each rounding up)."""
    return tuple(-(-int(s) // 8) for s in input_hw)
