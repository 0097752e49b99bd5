import math

import pytest
import torch
from torch import nn

from mnist_digits.errors import MnistDigitsError
from mnist_digits.model import (
    DigitNet,
    Dropout,
    ModelConfig,
    feature_size,
    format_summary,
    forward_flops,
    summarize,
)


def test_parameter_counts_match_the_keras_summary():
    summary = summarize(DigitNet())
    assert summary.total_params == 730_602
    assert summary.trainable_params == 730_346
    assert summary.non_trainable_params == 256
    assert [layer.params for layer in summary.layers if layer.params] == [
        320,
        9248,
        18496,
        36928,
        73856,
        589952,
        512,
        1290,
    ]


def test_output_shapes_follow_the_reference_architecture():
    shapes = {layer.name: layer.output_shape for layer in summarize(DigitNet()).layers}
    assert shapes["conv2d"] == (32, 26, 26)
    assert shapes["conv2d_1"] == (32, 24, 24)
    assert shapes["max_pooling2d_1"] == (64, 6, 6)
    assert shapes["flatten"] == (4608,)
    assert shapes["dense_1"] == (10,)
    assert feature_size(ModelConfig()) == 4608


def test_summary_table_lists_every_layer_and_the_totals():
    text = format_summary(summarize(DigitNet()))
    assert "Total params: 730,602" in text
    assert "Non-trainable params: 256" in text
    assert text.count("conv2d") == 5 and text.count("dropout") == 4


def test_forward_gives_logits_for_a_batch():
    model = DigitNet().eval()
    logits = model(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_initialization_is_keras_like():
    torch.manual_seed(0)
    model = DigitNet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    denses = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for conv in convs:
        fan_in = conv.weight[0].numel()
        std = math.sqrt(2 / fan_in)
        assert conv.bias.abs().max() == 0
        # He-normal, truncated at two standard deviations of the untruncated normal
        assert conv.weight.abs().max() <= 2 * std / 0.8796 + 1e-6
        if conv.weight.numel() > 5000:  # enough samples for a stable estimate
            assert conv.weight.std().item() == pytest.approx(std, rel=0.05)
    for dense in denses:
        limit = math.sqrt(6 / (dense.in_features + dense.out_features))
        assert dense.bias.abs().max() == 0
        assert dense.weight.abs().max() <= limit
        assert dense.weight.abs().max() > 0.9 * limit  # uniform: fills the range
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)


def test_config_roundtrip_and_other_sizes():
    config = ModelConfig(channels=(4, 8, 16), hidden=12)
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = DigitNet(config)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert summarize(model).total_params < 730_602


@pytest.mark.parametrize("kernel, side", [(5, 5), (7, 4)])
def test_larger_kernels_shrink_the_valid_block_and_keep_the_layout(kernel, side):
    config = ModelConfig(kernel=kernel)
    summary = summarize(DigitNet(config))
    shapes = {layer.name: layer.output_shape for layer in summary.layers}
    valid = 28 - (kernel - 1)
    assert shapes["conv2d"] == (32, valid, valid)
    assert shapes["conv2d_2"] == (64, (valid - kernel + 1) // 2, (valid - kernel + 1) // 2)  # 'same'
    assert shapes["flatten"] == (128 * side * side,) == (feature_size(config),)
    by_hand = [
        32 * (kernel * kernel + 1),
        32 * (32 * kernel * kernel + 1),
        64 * (32 * kernel * kernel + 1),
        64 * (64 * kernel * kernel + 1),
        128 * (64 * kernel * kernel + 1),
        128 * (128 * side * side + 1),
        512,
        1290,
    ]
    assert [layer.params for layer in summary.layers if layer.params] == by_hand
    assert DigitNet(config)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("kernel", [0, 4, 15])
def test_a_kernel_that_is_even_or_leaves_no_features_is_refused(kernel):
    with pytest.raises(MnistDigitsError, match=f"kernel {kernel}: give an odd size"):
        ModelConfig(kernel=kernel)


def test_a_model_config_stored_before_kernels_could_change_reads_as_3x3():
    stored = ModelConfig(channels=(4, 8, 16)).to_dict()
    del stored["kernel"]
    assert ModelConfig.from_dict(stored).kernel == 3


def test_forward_flops_counts_convolutions_and_dense_layers():
    by_hand = (
        2 * 1 * 9 * 32 * 26 * 26  # conv 1
        + 2 * 32 * 9 * 32 * 24 * 24  # conv 2
        + 2 * 32 * 9 * 64 * 12 * 12  # conv 3
        + 2 * 64 * 9 * 64 * 12 * 12  # conv 4
        + 2 * 64 * 9 * 128 * 6 * 6  # conv 5
        + 2 * 4608 * 128  # dense
        + 2 * 128 * 10  # classifier
    )
    assert forward_flops(DigitNet()) == by_hand == 33_422_080


@pytest.mark.parametrize("p", [0.2, 0.25])
def test_dropout_zeroes_a_share_p_and_scales_the_rest_as_nn_dropout(p):
    x = torch.rand(64, 32, 12, 12) + 0.5  # no zeros of its own
    layer = Dropout(p).train()
    torch.manual_seed(3)
    y = layer(x.requires_grad_())
    dropped = y == 0
    assert abs(dropped.float().mean().item() - p) < 0.01  # 295k values: 0.01 is over ten sigma
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))
    y.sum().backward()  # the gradient flows through the kept values only, scaled the same
    torch.testing.assert_close(x.grad, (~dropped).float() / (1 - p))
    torch.manual_seed(3)
    assert torch.equal(layer(x), y)  # the masks come from torch's seeded generator
    assert not torch.equal(layer(x), y)  # ...and differ from call to call
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))  # nn.Dropout's own answer


@pytest.mark.parametrize("shape", [(64, 128, 6, 6), (3, 7, 5)])  # a multiple of four values, and not
def test_dropout_draws_every_lane_of_the_generators_words_alike(shape):
    """Four 15-bit numbers come from each 64-bit word; the top lane must drop its share too."""
    torch.manual_seed(0)
    masks = torch.stack([Dropout(0.25).train()(torch.ones(shape)) == 0 for _ in range(400)])
    by_lane = masks.flatten(1).float().mean(0)  # each position's share over 400 draws
    lanes = torch.arange(by_lane.numel()) % 4
    for lane in range(4):
        share = by_lane[lanes == lane].mean().item()
        assert abs(share - 0.25) < 0.015, (lane, share)  # over three sigma for 105 values
    assert masks.float().std(0).min() > 0  # every position is dropped sometimes and kept sometimes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_draws_its_mask_in_the_inputs_memory_order(dtype):
    """A channels-last input (as training feeds the network) gets a channels-last mask: the same
    draw as for the same values stored channels-last as an (N, H, W, C) tensor, and its product
    and gradient stay channels-last."""
    x = (torch.rand(8, 12, 6, 6) + 0.5).to(dtype)
    channels_last = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    layer = Dropout(0.25).train()
    torch.manual_seed(5)
    y = layer(channels_last)
    torch.manual_seed(5)
    y_nhwc = layer(x.permute(0, 2, 3, 1).contiguous())  # the same memory, as a plain tensor
    assert torch.equal(y.permute(0, 2, 3, 1), y_nhwc)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones_like(y))
    assert channels_last.grad is not None
    assert channels_last.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(channels_last.grad == 0, y == 0)


def test_dropout_rounds_p_to_its_16_bit_threshold_at_both_ends():
    """p within 2^-16 of 1 drops every value (its threshold would not fit 16 bits); p within 2^-16
    of 0 keeps every value."""
    x = torch.rand(4, 8, 5, 5) + 0.5
    assert torch.equal(Dropout(1 - 2**-17).train()(x), torch.zeros_like(x))
    torch.testing.assert_close(Dropout(2**-17).train()(x), x / (1 - 2**-17))


def test_dropout_in_bfloat16_scales_in_float32_arithmetic():
    """4/3 has no bfloat16: scaling by the rounded 1.3359 would make every kept value 0.2% too big."""
    x = (torch.rand(64, 128, 6, 6) + 0.5).to(torch.bfloat16)
    y = Dropout(0.25).train()(x)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    expected = (x[kept].float() * (4 / 3)).to(torch.bfloat16)  # rounded once, from the exact product
    assert torch.equal(y[kept], expected)
