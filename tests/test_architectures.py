"""Architectures against parameter counts computed by hand from METHOD.md's layouts (VGG5/7/10/15) and
BEYOND.md C's (VGG9/11/13/19, the published code's `VGG_types`)."""

import pytest
import torch

from pccore.core.components import NoParams
from pccore_plugins.architectures import MLP, VGG, MLPParams, VGGParams
from pccore_plugins.normalization import BatchNormParams, FrozenBatchNorm, NoNormalization

# Written out from METHOD.md, independently of the plugin's layout tables: (in, out) of every 3x3 conv,
# then the head's input features as a function of the input size s.
CONVS = {
    "vgg5": [(3, 128), (128, 256), (256, 512), (512, 512)],
    "vgg7": [(3, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)],
    "vgg10": [(3, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 256),
              (256, 512)],
    "vgg15": [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512),
              (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)],
    # BEYOND.md C: VGG9  64 M 128 128 M 256 256 M 512 512 M 512 E
    "vgg9": [(3, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512)],
    # VGG11  64 128 128 M 128 256 M 256 256 M 256 512 M 512 E
    "vgg11": [(3, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 256),
              (256, 512), (512, 512)],
    # VGG13  128 128 128 M 128 256 M 256 256 M 256 512 M 512 512 M 512 E
    "vgg13": [(3, 128), (128, 128), (128, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512)],
    # VGG19  64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M
    "vgg19": [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)],
}
HEAD_FEATURES = {
    "vgg5": lambda s: 512 * (s // 16) ** 2,
    "vgg7": lambda s: 512 * ((s // 4 - 2) // 2 - 2) ** 2,
    "vgg10": lambda s: 512 * (s // 16) ** 2,
    "vgg15": lambda s: 512 * (s // 32) ** 2,
    "vgg9": lambda s: 512 * (s // 16) ** 2,  # four pools, the last conv ("E") keeps the map
    "vgg11": lambda s: 512 * (s // 16) ** 2,
    "vgg13": lambda s: 512 * (s // 32) ** 2,
    "vgg19": lambda s: 512 * (s // 32) ** 2,
}


def hand_count(name: str, size: int, classes: int, batchnorm: bool) -> int:
    convs = sum(i * o * 9 + o + (2 * o if batchnorm else 0) for i, o in CONVS[name])
    features = HEAD_FEATURES[name](size)
    if name == "vgg15":  # linear -> 4096 (+ BatchNorm) -> activation, then linear -> classes
        head = features * 4096 + 4096 + (2 * 4096 if batchnorm else 0) + 4096 * classes + classes
    else:
        head = features * classes + classes
    return convs + head


def built_count(name: str, size: int, classes: int, batchnorm: bool) -> tuple[int, int]:
    norm = FrozenBatchNorm(BatchNormParams()) if batchnorm else NoNormalization(NoParams())
    with torch.device("meta"):
        blocks = VGG(name, VGGParams()).build((3, size, size), classes, norm)
    return sum(p.numel() for b in blocks for p in b.parameters()), len(blocks)


@pytest.mark.parametrize("name,layers", [("vgg5", 5), ("vgg7", 7), ("vgg10", 10), ("vgg15", 15), ("vgg9", 9),
                                         ("vgg11", 11), ("vgg13", 13), ("vgg19", 17)])
@pytest.mark.parametrize("size,classes", [(32, 10), (64, 200)])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_vgg_parameter_counts_match_the_layouts(name, layers, size, classes, batchnorm):
    count, blocks = built_count(name, size, classes, batchnorm)
    assert blocks == layers
    assert count == hand_count(name, size, classes, batchnorm)


def test_two_counts_written_out_in_full():
    # VGG5, 32x32, 10 classes: 3584 + 295168 + 1180160 + 2359808 + (2048*10 + 10)
    assert built_count("vgg5", 32, 10, False)[0] == 3_859_210
    # VGG7 at 64x64 has a 5x5 map before the head: 512*25*200 + 200 head parameters
    assert built_count("vgg7", 64, 200, False)[0] - built_count("vgg7", 32, 200, False)[0] == 512 * 24 * 200


# The published code's VGGs with every digit: 3x32x32 with 10 classes (CIFAR-10), 3x64x64 with 200 (Tiny
# ImageNet). VGG19's head sees a 1x1 map at 32 px: its 16 convs hold 20,024,384 parameters, its head 5,130.
PUBLISHED_COUNTS = {
    "vgg9": (7_028_746, 8_646_856),
    "vgg11": (5_996_682, 7_614_792),
    "vgg13": (10_776_458, 11_181_128),
    "vgg19": (20_029_514, 20_434_184),
}


@pytest.mark.parametrize("name", PUBLISHED_COUNTS)
def test_published_code_vggs_counted_in_full(name):
    cifar10, tinyimagenet = PUBLISHED_COUNTS[name]
    assert built_count(name, 32, 10, False)[0] == cifar10
    assert built_count(name, 64, 200, False)[0] == tinyimagenet


def test_vgg19_is_sixteen_convs_and_one_linear_block():
    # BEYOND.md C: no trailing hidden width, so one linear layer maps the flattened features to the logits
    blocks = VGG("vgg19", VGGParams()).build((3, 32, 32), 10, NoNormalization(NoParams()))
    assert [type(b[0]).__name__ for b in blocks] == ["Conv2d"] * 16 + ["Flatten"]
    assert blocks[-1][1].in_features == 512 and blocks[-1][1].out_features == 10


def test_the_e_marker_leaves_the_last_conv_without_a_pool():
    blocks = VGG("vgg9", VGGParams(width=0.125)).build((3, 32, 32), 10, NoNormalization(NoParams()))
    h = torch.zeros(1, 3, 32, 32)
    shapes = []
    for block in blocks:
        h = block(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(8, 16, 16), (16, 16, 16), (16, 8, 8), (32, 8, 8), (32, 4, 4), (64, 4, 4), (64, 2, 2),
                      (64, 2, 2), (10,)]


# The smallest image side each VGG accepts: 2 ** (number of pools), VGG7 more for its two padding-0 convs.
SMALLEST = {"vgg5": 16, "vgg7": 32, "vgg9": 16, "vgg10": 16, "vgg11": 16, "vgg13": 32, "vgg15": 32, "vgg19": 32}


@pytest.mark.parametrize("name", SMALLEST)
def test_the_smallest_input_is_named_when_the_input_is_too_small(name):
    norm = NoNormalization(NoParams())
    side = SMALLEST[name]
    with torch.device("meta"):
        assert len(VGG(name, VGGParams()).build((3, side, side), 10, norm)) > 1
        for shape in [(3, side - 1, side - 1), (3, side, side - 1), (1, side - 1, 4 * side)]:
            with pytest.raises(ValueError) as err:
                VGG(name, VGGParams()).build(shape, 10, norm)
            text = str(err.value)
            assert f"input {'x'.join(map(str, shape))} is too small" in text
            assert f"the smallest image it accepts is {side}x{side}" in text


def test_output_shapes_and_the_wavefront_of_shapes():
    norm = NoNormalization(NoParams())
    blocks = VGG("vgg7", VGGParams(width=0.125)).build((3, 32, 32), 10, norm)
    h = torch.zeros(2, 3, 32, 32)
    shapes = []
    for block in blocks:
        h = block(h)
        shapes.append(tuple(h.shape))
    assert shapes == [(2, 16, 16, 16), (2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 6, 6), (2, 64, 3, 3),
                      (2, 64, 1, 1), (2, 10)]


def test_width_scales_channels_and_the_hidden_linear_layer():
    norm = NoNormalization(NoParams())
    blocks = VGG("vgg15", VGGParams(width=0.25)).build((3, 64, 64), 200, norm)
    assert blocks[0][0].out_channels == 16
    assert blocks[-2][1].out_features == 1024 and blocks[-1].out_features == 200


def test_vgg_rejects_flat_or_too_small_inputs():
    norm = NoNormalization(NoParams())
    with pytest.raises(ValueError, match="image inputs"):
        VGG("vgg5", VGGParams()).build((64,), 10, norm)
    with pytest.raises(ValueError, match="too small"):
        VGG("vgg7", VGGParams()).build((3, 16, 16), 10, norm)


def test_mlp_blocks_and_batchnorm_placement():
    blocks = MLP(MLPParams(hidden=[7, 5], activation="relu")).build((2, 3), 4, FrozenBatchNorm(BatchNormParams()))
    assert len(blocks) == 3
    assert [type(m).__name__ for m in blocks[0]] == ["Flatten", "Linear", "FreezableBatchNorm1d", "ReLU"]
    assert sum(p.numel() for b in blocks for p in b.parameters()) == (6 * 7 + 7 + 14) + (7 * 5 + 5 + 10) + (5 * 4 + 4)


def test_mlp_orthogonal_init_makes_every_weight_matrix_orthogonal() -> None:
    """The ePC authors' deep MLPs: W W^T = I for a wide-to-narrow matrix, W^T W = I otherwise; the default
    initialisation is not orthogonal."""
    torch.manual_seed(0)
    blocks = MLP(MLPParams(hidden=[16, 16, 8], init="orthogonal")).build((1, 4, 5), 3, NoNormalization(NoParams()))
    weights = [m.weight for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(w.shape) for w in weights] == [(16, 20), (16, 16), (8, 16), (3, 8)]
    for w in weights:
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)
    plain = MLP(MLPParams(hidden=[16, 16, 8])).build((1, 4, 5), 3, NoNormalization(NoParams()))
    w = [m.weight for b in plain for m in b.modules() if isinstance(m, torch.nn.Linear)][1]
    assert not torch.allclose(w @ w.T, torch.eye(16), atol=1e-2)
