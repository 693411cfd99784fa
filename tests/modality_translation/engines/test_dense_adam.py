import io

import pytest
import torch

from modality_translation.engines import adam_optimizer
from modality_translation.engines.dense_adam import Adam


def _parameters(channels_last: bool):
    torch.manual_seed(0)
    shapes = [(6, 3, 4, 4), (4, 4, 4, 4), (5, 2, 3, 3, 3), (7,), (3, 5)]
    parameters = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    if channels_last:
        for parameter in parameters:
            if parameter.ndim == 4:
                parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
            elif parameter.ndim == 5:
                parameter.data = parameter.data.contiguous(memory_format=torch.channels_last_3d)
    return parameters


def _steps(optimizer, parameters, count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        for parameter in parameters:
            gradient = torch.randn(parameter.shape, generator=generator)
            # In the parameter's layout, as autograd accumulates it.
            parameter.grad = torch.empty_like(parameter).copy_(gradient)
        optimizer.step()


@pytest.mark.parametrize("fused", [True, False])
def test_channels_last_parameters_get_the_update_of_torch_adam(fused):
    # The square (4, 4, 4, 4) weight is the case where a permuted view has the parameter's own shape.
    plain = _parameters(channels_last=False)
    dense = _parameters(channels_last=True)
    _steps(torch.optim.Adam(plain, lr=1e-2, betas=(0.5, 0.999), fused=fused), plain, 3)
    optimizer = Adam(dense, lr=1e-2, betas=(0.5, 0.999), fused=fused)
    _steps(optimizer, dense, 3)
    for p, q in zip(plain, dense):
        assert q.shape == p.shape
        torch.testing.assert_close(q, p, rtol=0, atol=0)
        assert q.stride() == q.grad.stride()
        for key in ("exp_avg", "exp_avg_sq"):
            moment = optimizer.state[q][key]
            assert moment.shape == q.shape and moment.stride() == q.stride()
    assert dense[0].is_contiguous(memory_format=torch.channels_last) and not dense[0].is_contiguous()
    assert dense[2].is_contiguous(memory_format=torch.channels_last_3d)


def test_state_dict_round_trip_resumes_exactly():
    reference = _parameters(channels_last=True)
    optimizer = Adam(reference, lr=1e-2, fused=True)
    _steps(optimizer, reference, 2)
    buffer = io.BytesIO()
    torch.save({"parameters": [p.detach().clone() for p in reference], "optimizer": optimizer.state_dict()}, buffer)
    _steps(optimizer, reference, 2, seed=5)

    saved = torch.load(io.BytesIO(buffer.getvalue()))
    resumed = _parameters(channels_last=True)
    with torch.no_grad():
        for parameter, value in zip(resumed, saved["parameters"]):
            parameter.copy_(value)
    optimizer = Adam(resumed, lr=1e-2, fused=True)
    optimizer.load_state_dict(saved["optimizer"])
    # The checkpoint holds the moments in the parameters' shapes, as torch.optim.Adam writes them.
    assert saved["optimizer"]["state"][0]["exp_avg"].shape == (6, 3, 4, 4)
    _steps(optimizer, resumed, 2, seed=5)
    for p, q in zip(reference, resumed):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_adam_optimizer_returns_the_layout_preserving_adam():
    network = torch.nn.Conv2d(3, 4, 3)
    optimizer = adam_optimizer(network)
    assert isinstance(optimizer, Adam) and optimizer.defaults["fused"]


def test_fused_kernel_receives_dense_tensors(monkeypatch):
    # The point of the class: no argument of the fused kernel needs a copy into the default layout.
    seen = []
    kernel = torch._fused_adam_

    def recording_kernel(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs):
        seen.append(all(t.is_contiguous() for t in [*params, *grads, *exp_avgs, *exp_avg_sqs]))
        return kernel(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", recording_kernel)
    parameters = _parameters(channels_last=True)
    _steps(Adam(parameters, lr=1e-2, fused=True), parameters, 2)
    assert seen == [True, True]
    seen.clear()
    _steps(torch.optim.Adam(parameters, lr=1e-2, fused=True), parameters, 1)
    assert seen == [False]
