"""The backbones' channel counts, without importing Paddle (model-file checks and the light
deployment path read them): layer1, layer2, layer3 of each ResNet."""

CHANNELS = {
    "resnet18": (64, 128, 256),
    "wide_resnet50_2": (256, 512, 1024),
}


def feature_dim(arch):
    """Number of channels F of the concatenated embedding of ``arch``."""
    return sum(CHANNELS[arch])
