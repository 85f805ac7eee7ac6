"""Backbone names, importable without loading torch (the app and config read them)."""

TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
)
# Stage widths of the narrow ResNets built in models.backbones.
NARROW_RESNETS = {"resnet10t": (16, 32, 64, 128), "resnet10n": (32, 64, 128, 256)}
# Backbones fitted to the images (models.patch_kmeans) rather than trained. Only their
# projection and heads train, on features cached once (core.head_only).
PATCH_KMEANS = "patch-kmeans"
FITTED_BACKBONES = (PATCH_KMEANS,)
BACKBONES = tuple(NARROW_RESNETS) + FITTED_BACKBONES + TORCHVISION_RESNETS
