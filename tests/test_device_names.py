"""A device that is misspelt, or that this machine lacks, is one `error:` line before anything starts
(it was an 'internal error' from CUDA after the teacher stage had begun, or from `torch.device`)."""
import pytest
import torch

from noisystudent import distributed as D
from noisystudent.cli import main
from noisystudent.errors import UserError


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "mps"])
def test_device_names_torch_knows_are_accepted(name):
    assert D.device_name_error(name) is None


@pytest.mark.parametrize("name", ["gpu", "cuda0", "cuda:x", "", "GPU:0"])
def test_misspelt_devices_are_named_with_the_allowed_ones(name):
    assert D.device_name_error(name) == f"{name!r} is not a device; use auto, cpu, cuda or cuda:N"
    with pytest.raises(UserError, match="is not a device; use auto, cpu, cuda or cuda:N"):
        D.resolve_device(name)


def test_cuda_on_a_machine_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=rf"device '{name}': no CUDA GPU is visible here .*use --device auto or cpu"):
            D.resolve_device(name)


def test_a_gpu_index_beyond_the_machines(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert D.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert D.resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"device 'cuda:2': this machine has 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        D.resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"has 1 CUDA GPU\(s\) \(cuda:0\)"):
        D.resolve_device("cuda:1")


def test_cli_device_errors_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)     # a machine without CUDA, on any machine
    run = tmp_path / "run"
    assert main(["train", "digits-demo", "--run-dir", str(run), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: device 'cuda': no CUDA GPU is visible here"), err
    assert not run.exists(), "nothing may be written for a run that cannot start"
    assert main(["train", "digits-demo", "--run-dir", str(run), "--set", "device=gpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: config key 'device': 'gpu' is not a device; use auto, cpu, cuda or cuda:N")
    assert not run.exists()
