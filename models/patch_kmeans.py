"""A backbone fitted to the images instead of trained: k-means on whitened patches.

Coates, Lee and Ng ("An Analysis of Single-Layer Networks in Unsupervised
Feature Learning", AISTATS 2011, https://proceedings.mlr.press/v15/coates11a.html)
reached 79.6 % on CIFAR-10 with a linear classifier on one layer of features
learned by k-means on small image patches. Such a dictionary is fitted in
seconds on a CPU, and training then teaches only the projection and the heads
(see ``core.head_only``).

The features of an image, for a dictionary of ``K`` centroids of
``P``x``P`` patches:

1. every ``P``x``P`` patch is centred on its own mean and divided by its
   standard deviation (brightness and contrast normalisation);
2. it is whitened with the ZCA matrix of random patches of the folder;
3. its distance ``z_k`` to every centroid ``k`` gives the "triangle"
   activation ``max(0, mean_j z_j - z_k)``: centroids closer than average fire;
4. the (K, H - P + 1, W - P + 1) activation map is averaged over the four
   quadrants of the image;
5. the (4 K,) result is standardised with the mean and standard deviation of
   the plain images of the folder.

Steps 1 and 2 run as three convolutions (patch sums, sums of squares and the
whitening filters), step 3 as one matrix product and a few element-wise
operations.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

NUM_CENTROIDS = 400
PATCH_SIZE = 6
POOL_GRID = 2
FEATURE_DIM = NUM_CENTROIDS * POOL_GRID * POOL_GRID
FIT_PATCHES = 100_000
FIT_IMAGES = 10_000
KMEANS_ITERATIONS = 20
# Added to each patch's variance, in squared 8-bit levels: flat patches are not blown up into noise.
CONTRAST_EPS = 10.0
# Added to the patch covariance's eigenvalues before whitening.
WHITEN_EPS = 0.1
FIT_BATCH = 256
FORWARD_CHUNK = 16


class PatchKMeans(nn.Module):
    """Map (batch, 3, H, W) ImageNet-normalised images to (batch, ``FEATURE_DIM``) features.

    A new instance contains zeros; ``fit`` sets its dictionary from images, or
    ``load_state_dict`` from a saved one. It has no trainable parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        patch_dim = 3 * PATCH_SIZE * PATCH_SIZE
        # Rows of the ZCA matrix as convolution filters, and each row's sum.
        self.register_buffer("whiten", torch.zeros(patch_dim, 3, PATCH_SIZE, PATCH_SIZE))
        self.register_buffer("whiten_sums", torch.zeros(patch_dim))
        # The whitened mean patch, subtracted after whitening.
        self.register_buffer("whitened_mean", torch.zeros(patch_dim))
        self.register_buffer("centroids", torch.zeros(NUM_CENTROIDS, patch_dim))
        self.register_buffer("feature_mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("feature_std", torch.ones(FEATURE_DIM))
        # Constants, so not saved with the fitted state.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = FEATURE_DIM

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Small chunks keep the (chunk, H', W', K) distances in the CPU caches: on 2 cores, 16
        # images at a time run twice as fast as 256.
        with torch.autocast(images.device.type, enabled=False):
            pooled = [self._pooled(chunk.float()) for chunk in images.split(FORWARD_CHUNK)]
            return (torch.cat(pooled) - self.feature_mean) / self.feature_std

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        # (batch, H', W', K) activations to quadrant means, (batch, K, grid, grid) flattened.
        activations = self.activations(images)
        return F.adaptive_avg_pool2d(activations.permute(0, 3, 1, 2), POOL_GRID).flatten(1)

    def activations(self, images: torch.Tensor) -> torch.Tensor:
        """Return the (batch, H - P + 1, W - P + 1, K) triangle activations of normalised images."""
        levels = (images * self.pixel_std + self.pixel_mean) * 255
        whitened = self._whitened_patches(levels).permute(0, 2, 3, 1).contiguous()
        batch, height, width, patch_dim = whitened.shape
        # Squared distances |u - c|^2 = |u|^2 + |c|^2 - 2 u.c, computed in place, centroids last.
        distances = (whitened.view(-1, patch_dim) @ self.centroids.T).view(batch, height, width, -1)
        distances.mul_(-2).add_(whitened.square().sum(-1, keepdim=True)).add_(self.centroids.square().sum(1))
        distances.clamp_min_(0).sqrt_()
        mean = distances.mean(-1, keepdim=True)
        return distances.sub_(mean).neg_().clamp_min_(0)

    def _whitened_patches(self, levels: torch.Tensor) -> torch.Tensor:
        """Return the (batch, 3 P P, H', W') whitened, contrast-normalised patches of 0-255 images."""
        patch_dim = self.whiten.shape[0]
        ones = torch.ones(1, 3, PATCH_SIZE, PATCH_SIZE, device=levels.device)
        sums = F.conv2d(levels, ones)
        mean = sums / patch_dim
        variance = (F.conv2d(levels.square(), ones) - sums * mean) / (patch_dim - 1)
        scale = (variance.clamp_min(0) + CONTRAST_EPS).rsqrt()
        # W (p - m 1) / s = (W p - m W 1) / s, so one convolution whitens every patch.
        projected = F.conv2d(levels, self.whiten) - mean * self.whiten_sums.view(1, -1, 1, 1)
        return projected * scale - self.whitened_mean.view(1, -1, 1, 1)

    @torch.no_grad()
    def fit(self, images: np.ndarray, seed: int) -> PatchKMeans:
        """Fit the whitening, the dictionary and the feature statistics to (N, S, S, 3) uint8 images.

        Raises:
            ValueError: if the images are smaller than a patch or there are none.
        """
        if len(images) == 0 or min(images.shape[1:3]) < PATCH_SIZE:
            raise ValueError(
                f"invalid images for patch-kmeans: it needs at least one image of at least {PATCH_SIZE} "
                f"pixels per side, got an array of shape {images.shape}; pass a larger --image-size"
            )
        patches = _normalised_patches(_random_patches(images, FIT_PATCHES, seed))
        mean = patches.mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov((patches - mean).T))
        whiten = eigenvectors @ torch.diag((eigenvalues.clamp_min(0) + WHITEN_EPS).rsqrt()) @ eigenvectors.T
        whitened = ((patches - mean) @ whiten).float()

        kmeans = faiss.Kmeans(whitened.shape[1], NUM_CENTROIDS, niter=KMEANS_ITERATIONS, seed=seed)
        kmeans.train(whitened.numpy())
        self.whiten.copy_(whiten.float().view_as(self.whiten))
        self.whiten_sums.copy_(whiten.sum(1).float())
        self.whitened_mean.copy_((mean @ whiten).float())
        self.centroids.copy_(torch.from_numpy(kmeans.centroids))
        self._fit_feature_statistics(images)
        return self

    def _fit_feature_statistics(self, images: np.ndarray) -> None:
        self.feature_mean.zero_()
        self.feature_std.fill_(1)
        total = torch.zeros(FEATURE_DIM, dtype=torch.float64)
        total_squares = torch.zeros(FEATURE_DIM, dtype=torch.float64)
        for start in range(0, len(images), FIT_BATCH):
            pixels = torch.from_numpy(np.array(images[start:start + FIT_BATCH])).permute(0, 3, 1, 2)
            features = self(normalize(pixels.float() / 255)).double()
            total += features.sum(0)
            total_squares += features.square().sum(0)
        mean = total / len(images)
        variance = (total_squares / len(images) - mean.square()).clamp_min(0)
        self.feature_mean.copy_(mean.float())
        # Features that never fire keep unit scale rather than a division by zero.
        self.feature_std.copy_(torch.where(variance > 1e-12, variance.sqrt(), torch.ones_like(variance)).float())


def _random_patches(images: np.ndarray, count: int, seed: int) -> torch.Tensor:
    """Return (count, 3 P P) float64 patches in 0-255 levels, flattened channel first like conv filters."""
    rng = np.random.default_rng(seed)
    num_images, height, width = images.shape[:3]
    # Patches come from at most FIT_IMAGES images, read once each.
    subset = np.sort(rng.choice(num_images, size=min(num_images, FIT_IMAGES), replace=False))
    chosen = np.asarray(images[subset])
    image_index = rng.integers(len(subset), size=count)
    rows = rng.integers(height - PATCH_SIZE + 1, size=count)
    cols = rng.integers(width - PATCH_SIZE + 1, size=count)
    offsets = np.arange(PATCH_SIZE)
    # Broadcast (count, 1, 1), (count, P, 1) and (count, 1, P) indices to (count, P, P, 3) blocks.
    row_index = (rows[:, None] + offsets)[:, :, None]
    col_index = (cols[:, None] + offsets)[:, None, :]
    blocks = chosen[image_index[:, None, None], row_index, col_index]
    return torch.from_numpy(blocks).permute(0, 3, 1, 2).reshape(count, -1).double()


def _normalised_patches(patches: torch.Tensor) -> torch.Tensor:
    """Centre every (3 P P,) patch on its mean and divide by its standard deviation."""
    centred = patches - patches.mean(1, keepdim=True)
    return centred / (centred.var(1, keepdim=True) + CONTRAST_EPS).sqrt()
