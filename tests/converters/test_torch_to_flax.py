"""The generic rename/transpose rules, one layer type at a time, against torch."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from converters.torch_to_flax import ConversionError, load_state_dict
from fewsam_jax.modeling.common import conv, layer_norm


class Layers(nnx.Module):
    """One of each layer type, laid out like a torch ``nn.Sequential`` with an activation slot."""

    def __init__(self, rngs: nnx.Rngs):
        self.seq = nnx.List([
            conv(3, 8, 3, rngs, stride=2, padding=1),
            layer_norm(8, rngs),
            jax.nn.relu,
            nnx.ConvTranspose(8, 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
            nnx.BatchNorm(4, use_running_average=True, rngs=rngs),
        ])
        self.head = nnx.Linear(4, 5, rngs=rngs)
        self.table = nnx.Embed(2, 5, rngs=rngs)
        self.extra = nnx.Param(np.zeros((1, 5), np.float32))

    def __call__(self, x):
        for layer in self.seq:
            x = layer(x)
        return self.head(x) + self.table.embedding[...][1] + self.extra[...]


class TorchLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            _ChannelLayerNorm(8),
            torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(8, 4, 2, stride=2),
            torch.nn.BatchNorm2d(4),
        )
        self.head = torch.nn.Linear(4, 5)
        self.table = torch.nn.Embedding(2, 5)
        self.extra = torch.nn.Parameter(torch.randn(1, 5))

    def forward(self, x):
        x = self.seq(x).permute(0, 2, 3, 1)
        return self.head(x) + self.table.weight[1] + self.extra


class _ChannelLayerNorm(torch.nn.LayerNorm):
    def __init__(self, dim):
        super().__init__(dim, eps=1e-6)

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.fixture
def torch_layers():
    torch.manual_seed(0)
    model = TorchLayers()
    with torch.no_grad():  # non-trivial norm statistics and affine parameters
        bn = model.seq[4]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        model.seq[1].weight.uniform_(0.5, 2)
    return model.eval()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_rules_match_torch_forward(torch_layers):
    ours = Layers(nnx.Rngs(0))
    report = load_state_dict(ours, state_dict_numpy(torch_layers))
    assert report.skipped == ["seq.4.num_batches_tracked"]
    assert not report.missing and not report.unexpected
    x = np.random.default_rng(0).normal(size=(2, 3, 10, 10)).astype(np.float32)
    with torch.no_grad():
        expected = torch_layers(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(ours(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_shape_mismatch_names_the_key(torch_layers):
    state = state_dict_numpy(torch_layers)
    state["head.weight"] = np.zeros((5, 3), np.float32)
    with pytest.raises(ConversionError, match=r"'head.weight'.*\(5, 3\)"):
        load_state_dict(Layers(nnx.Rngs(0)), state)


def test_missing_and_unexpected_keys_are_named(torch_layers):
    state = state_dict_numpy(torch_layers)
    del state["table.weight"]
    state["seq.7.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"missing \(1\): table.embedding.*unexpected \(1\): seq.7.weight"):
        load_state_dict(Layers(nnx.Rngs(0)), state)


def test_failed_load_leaves_model_untouched(torch_layers):
    ours = Layers(nnx.Rngs(0))
    before = np.asarray(ours.head.kernel[...]).copy()
    state = state_dict_numpy(torch_layers)
    state["extra"] = np.zeros((2, 5), np.float32)
    with pytest.raises(ConversionError):
        load_state_dict(ours, state)
    np.testing.assert_array_equal(np.asarray(ours.head.kernel[...]), before)
