"""Sample quality: a Fréchet distance in the feature space of a classifier vaelab trains.

FID (Heusel et al. 2017) compares Gaussian fits of Inception-v3 features of real and
generated images. Inception weights cannot be fetched here and do not fit 28x28 grey
digits anyway, so vaelab trains its own small convolutional classifier on the dataset's
labels (once per dataset, cached) and measures

    FD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)

between its penultimate-layer features of test images and of generated ones. Lower is
better; 0 for identical feature statistics. The number is comparable between models
evaluated with the same classifier (same dataset, image size and binarisation: the
cache key), and NOT comparable to Inception-based FID values in papers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from vaelab.batches import Feed, as_input
from vaelab.config import ConfigError
from vaelab.data import Dataset, cache_dir, read_rows
from vaelab.files import atomic_path, ensure_dir, write_json
from vaelab.runtime import ProgressLine, progress_bar

__all__ = ["frechet_distance", "FeatureNet", "classifier", "features"]

CLASSIFIER_VERSION = 1
FEATURES = 128


class FeatureNet(nn.Module):
    """The small convolutional classifier whose features the Fréchet distance compares.

    Three conv levels (32, 64, 128 channels; stride 2 between) and global average pooling
    turn images (B, C, H, W) of any size into (B, 128) features (``net.features``); the
    linear ``net.head`` maps them to class logits. ``classifier`` trains and caches one
    per dataset.

    Args:
        channels: The images' channels C (1 grey, 3 RGB).
        n_classes: The number of classes K the head predicts.

    Examples:
        >>> from vaelab.quality import FeatureNet
        >>> net = FeatureNet(channels=1, n_classes=10)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> net(x).shape, net.features(x).shape
        (torch.Size([2, 10]), torch.Size([2, 128]))
        >>> net(torch.rand(2, 1, 12, 20)).shape                # any image size
        torch.Size([2, 10])
    """

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for i, c in enumerate((32, 64, FEATURES)):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            if i < 2:
                layers += [nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURES, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of float images x (B, C, H, W) in [0, 1]."""
        return self.head(self.features(x))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussian fits of two sets of features; 0 for equal statistics.

    FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), computed in float64.
    tr((S_a S_b)^1/2) is the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S_a^1/2 S_b S_a^1/2 (same spectrum as S_a S_b), so no non-symmetric matrix
    square root is needed.

    Args:
        a: Features (N, F) of one set, e.g. of test images (``features``).
        b: Features (M, F) of the other, e.g. of generated images; M may differ from N.

    Returns:
        The distance, a float >= 0 (up to rounding).

    Examples:
        >>> from vaelab.quality import frechet_distance
        >>> a = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
        >>> round(frechet_distance(a, a), 6)
        0.0
        >>> round(frechet_distance(a, a + 1), 2)      # means 1 apart in each of 4 dimensions
        4.0
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ev, vec = torch.linalg.eigh(s_a)
    root_a = (vec * ev.clamp_min(0).sqrt()) @ vec.T
    middle = root_a @ s_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * tr_sqrt)


def _key(data: Dataset, binarization: str, steps: int) -> str:
    ident = json.dumps({"v": CLASSIFIER_VERSION, "dataset": data.name, "source": str(data.source),
                        "fingerprint": data.fingerprint, "shape": list(data.image_shape),
                        "n_train": len(data.train), "binarization": binarization, "steps": steps}, sort_keys=True)
    return hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()


def classifier(data: Dataset, binarization: str, device: torch.device, steps: int = 2000, seed: int = 0,
               progress: bool = True) -> tuple[FeatureNet, dict[str, Any]]:
    """The feature classifier of a dataset, trained once and then loaded from the cache.

    It sees `data` as models do (binarised like the run, or grey levels): `steps` Adam steps
    on batches of 128 training images (2000: about 4 epochs of MNIST), trained once and
    cached in ``$XDG_CACHE_HOME/vaelab/classifiers/<key>/`` (weights as safetensors: loading
    runs no code) with its test accuracy. The key covers the dataset, image size,
    binarisation and `steps`.

    Args:
        data: A labelled dataset; images (N, C, H, W) uint8.
        binarization: ``"dynamic"``, ``"fixed"`` or ``"none"`` (grey levels), as the run's data.
        device: Where to train and put the network.
        steps: Adam steps of training.
        seed: The seed of the initial weights, the batch order and the binarisation noise.
        progress: Whether to show a progress bar while training.

    Returns:
        (the trained ``FeatureNet`` on `device` in eval mode, a dict with its
        ``test_accuracy`` and how it was trained).

    Raises:
        vaelab.data.DataError: The dataset is unlabelled.

    Examples:
        >>> from vaelab.data import Dataset, Split
        >>> from vaelab.quality import classifier
        >>> labels = torch.arange(32) % 2                   # dark and light 8x8 images
        >>> images = (labels.view(-1, 1, 1, 1) * 200 + torch.randint(0, 50, (32, 1, 8, 8))).to(torch.uint8)
        >>> data = Dataset("toy", Split(images[:24], labels[:24]), Split(images[24:], labels[24:]),
        ...                ("dark", "light"), source="toy", fingerprint="toy")
        >>> net, info = classifier(data, "none", torch.device("cpu"), steps=3, progress=False)
        >>> again, info_again = classifier(data, "none", torch.device("cpu"), steps=3)   # from the cache
        >>> type(net).__name__, sorted(info)
        ('FeatureNet', ['binarization', 'dataset', 'features', 'seed', 'steps', 'test_accuracy', 'version'])
        >>> 0 <= info["test_accuracy"] <= 1, info_again == info
        (True, True)
    """
    from safetensors.torch import load_file, save_file

    data.require_labels("the Fréchet distance (its feature classifier learns the labels)")
    folder = cache_dir() / "classifiers" / _key(data, binarization, steps)
    net = FeatureNet(data.image_shape[0], len(data.classes))
    try:
        info = json.loads((folder / "classifier.json").read_text())
        net.load_state_dict(load_file(str(folder / "weights.safetensors")))
        return net.to(device).eval(), info
    except (OSError, ValueError, RuntimeError, KeyError):
        pass  # not cached yet (or damaged): train it
    torch.manual_seed(seed)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator(device=device).manual_seed(seed)  # binarisation noise
    order = torch.Generator().manual_seed(seed)
    train_u8, labels = data.train.images, data.train.labels
    n = len(data.train)
    bar = ProgressLine(f"training the FD feature classifier of {data.name}", steps, "steps", show=progress,
                       bar=progress_bar(total=steps, desc="training the FD feature classifier", unit="step",
                                        show=progress))
    done = 0
    with torch.enable_grad():
        while done < steps:
            for idx in torch.randperm(n, generator=order).split(128)[: steps - done]:
                u8 = read_rows(train_u8, idx).to(device)
                x = as_input(u8, Feed(binarization), generator=g)
                loss = nn.functional.cross_entropy(net(x), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                bar.update(1)
    bar.close()
    net.eval()
    with torch.no_grad():
        correct = 0
        for i in range(0, len(data.test), 1000):
            u8 = read_rows(data.test.images, torch.arange(i, min(i + 1000, len(data.test)))).to(device)
            x = as_input(u8, Feed(binarization), generator=g)
            correct += int((net(x).argmax(1).cpu() == data.test.labels[i : i + 1000]).sum())
    info = {"test_accuracy": correct / len(data.test), "steps": steps, "seed": seed, "dataset": data.name,
            "binarization": binarization, "features": FEATURES, "version": CLASSIFIER_VERSION}
    ensure_dir(folder, "classifier cache")
    with atomic_path(folder / "weights.safetensors", ".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    write_json(folder / "classifier.json", info)
    return net, info


@torch.no_grad()
def features(net: FeatureNet, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """The classifier's penultimate-layer features of images: what the Fréchet distance compares.

    Args:
        net: A ``FeatureNet``, e.g. from ``classifier``.
        images: Float images (N, C, H, W) in [0, 1], on the network's device.
        batch: Images per forward pass.

    Returns:
        Features (N, 128), on the CPU.

    Examples:
        >>> from vaelab.quality import FeatureNet, features, frechet_distance
        >>> net = FeatureNet(channels=1, n_classes=10).eval()
        >>> f = features(net, torch.rand(20, 1, 28, 28), batch=8)      # in 3 passes
        >>> f.shape
        torch.Size([20, 128])
        >>> frechet_distance(f, features(net, torch.rand(20, 1, 28, 28))) >= 0
        True
    """
    return torch.cat([net.features(images[i : i + batch]) for i in range(0, len(images), batch)]).cpu()


def inception_metric(device: torch.device):
    """torchmetrics' FrechetInceptionDistance (2048-D Inception-v3 pool features, float
    images in [0, 1]) on `device`: the FID of papers, for machines that can have it. A
    ConfigError names the extra when the library is missing and says where the weights come
    from when they cannot be loaded."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        raise ConfigError("--metrics fid needs torchmetrics' Inception-v3 (it also needs torchvision): "
                          "pip install 'vaelab[inception]', or use --metrics fd") from None
    try:
        return FrechetInceptionDistance(feature=2048, normalize=True).to(device)
    except Exception as e:  # noqa: BLE001 - the weights are fetched on first use; any failure is one line
        raise ConfigError(f"--metrics fid could not load the Inception-v3 weights ({type(e).__name__}: {e}); "
                          "torch-fidelity downloads them on first use, so run it once with network access") from None


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, 3, H, W): grey images repeated over three channels (the
    library resizes to 299 x 299 itself)."""
    if images.shape[1] not in (1, 3):
        raise ValueError(f"Inception FID takes grey or RGB images, got {images.shape[1]} channels")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
