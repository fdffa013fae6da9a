"""The datasets of the paper's published code (changqi97/DeepPCNs) beyond CIFAR and Tiny ImageNet:
MNIST, FashionMNIST, ImageNet32, ImageNette, ImageNet-10 and Galaxy10 DECaLS, registered as components.

Each family lives in its own module; heavy imports (torchvision, PIL, h5py, scikit-learn) wait for
`load()`, so listing plugins stays fast.
"""

from __future__ import annotations

from pccore.plugin import Component, hookimpl
from pccore_plugins.datasets_galaxy10 import Galaxy10, Galaxy10Params
from pccore_plugins.datasets_imagenet import (
    ImageNet10,
    ImageNet10Params,
    ImageNet32,
    ImageNet32Params,
    ImageNette,
    ImageNetteParams,
)
from pccore_plugins.datasets_mnist import FashionMnist, Mnist, MnistParams


@hookimpl
def pccore_register_dataset():
    return [
        Component("mnist", Mnist, MnistParams, "MNIST via torchvision, 28x28 grey, 10 classes, no augmentation",
                  label="MNIST"),
        Component("fashionmnist", FashionMnist, MnistParams,
                  "FashionMNIST via torchvision, 28x28 grey, 10 classes, no augmentation", label="FashionMNIST"),
        Component("imagenet32", ImageNet32, ImageNet32Params,
                  "ImageNet32 from its pickled batches (placed by the user), 32x32, 1000 classes, cached",
                  label="ImageNet32"),
        Component("imagenette", ImageNette, ImageNetteParams,
                  "fast.ai's imagenette2, center crop 224 resized to 32x32, 10 classes, decoded once and cached",
                  label="ImageNette"),
        Component("imagenet10", ImageNet10, ImageNet10Params,
                  "the first `classes` classes of a user-supplied ImageNet tree, center crop 224 resized to "
                  "`size` (112), decoded once and cached", label="ImageNet-10"),
        Component("galaxy10", Galaxy10, Galaxy10Params,
                  "Galaxy10 DECaLS from its HDF5 file (needs pccore[galaxy]), 256x256, 10 classes, 10% test "
                  "split with seed 42, decoded once and cached", label="Galaxy10"),
    ]
