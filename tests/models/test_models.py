import pytest
import torch

from compress.models import create_model, list_models
from compress.pruning.plan import infer_output

PAPER_PARAMS = {"lenet300_100": 266_610, "conv2": 4_301_642, "conv4": 2_425_930, "conv6": 2_262_602}
TIMM_NAMES = ["timm/resnet18", "timm/mobilenetv3_small_100"]


def _input_for(name: str) -> torch.Tensor:
    return torch.randn(2, 1, 28, 28) if name.startswith("lenet") else torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_forward_and_backward(name):
    x = _input_for(name)
    model = create_model(name, num_classes=10, in_channels=x.shape[1])
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_models_run_forward_and_backward(name):
    model = create_model(name, num_classes=10, in_channels=3)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()


@pytest.mark.parametrize(("name", "count"), sorted(PAPER_PARAMS.items()))
def test_paper_parameter_counts(name, count):
    in_channels = 1 if name.startswith("lenet") else 3
    model = create_model(name, in_channels=in_channels)
    assert sum(p.numel() for p in model.parameters()) == count


def test_conv_widths_follow_the_paper():
    convs = [m for m in create_model("conv6").modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match="available: .*lenet300_100"):
        create_model("lenet301")


def test_list_models_pattern_and_output_layer():
    assert list_models("conv*") == ["conv2", "conv4", "conv6"]
    assert infer_output(create_model("lenet300_100")) == ["5"]
    assert infer_output(create_model("resnet20")) == ["fc"]
    assert infer_output(create_model("timm/resnet18")) == ["fc"]


def test_same_seed_same_init():
    torch.manual_seed(3)
    a = create_model("conv2").state_dict()
    torch.manual_seed(3)
    b = create_model("conv2").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
