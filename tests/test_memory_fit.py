"""Memory (generator/backends/memory.py): weight sizes from safetensors headers against the tensors themselves, the
fit rule of each --offload mode with injected free memory, --offload refused where it cannot apply, the flag's
way from the CLI to the backend, and the peak memory a frame records."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

import tiny_depth
import tiny_pipelines
from generator.__main__ import main
from generator.backends import BackendUnavailable, load_backend
from generator.backends import memory
from generator.backends.memory import MARGIN, check_fit, model_weights, place

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # only .type and the name are used: no GPU is touched
COMPONENTS = ("text_encoder", "unet", "vae")  # the tiny SD's weighted parts (its safety checker is None)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_pipelines.build("sd", tmp_path_factory.mktemp("pipelines") / "sd")


@pytest.fixture(scope="module")
def estimator(tmp_path_factory):
    return tiny_depth.build("depth_anything", tmp_path_factory.mktemp("estimator") / "depth-anything")


@pytest.fixture(scope="module")
def weights(sd):
    return model_weights(str(sd))


def state_dicts(folder):
    return {name: {key: tensor for path in sorted((folder / name).glob("*.safetensors"))
                   for key, tensor in load_file(path).items()} for name in COMPONENTS}


def test_sizes_from_the_headers_are_the_tensors_bytes_in_each_dtype(sd, weights):
    tensors = state_dicts(sd)
    assert sorted(weights.components) == sorted(COMPONENTS)
    assert weights.component_bytes() == {name: sum(t.nbytes for t in sd_.values()) for name, sd_ in tensors.items()}
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        expected = sum(t.numel() * dtype.itemsize if t.is_floating_point() else t.nbytes
                       for sd_ in tensors.values() for t in sd_.values())
        assert weights.total(dtype.itemsize) == expected
    assert weights.total(2) * 2 == weights.total(4) == weights.total()  # the tiny pipeline is saved in fp32


def test_the_largest_layer_is_the_largest_modules_own_parameters(sd, weights):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd, safety_checker=None, requires_safety_checker=False)
    own = max(sum(p.nbytes for p in module.parameters(recurse=False))
              for name in COMPONENTS for module in getattr(pipe, name).modules())
    what, size = weights.need("sequential")
    assert size == own and what.startswith("its largest layer (")
    assert weights.need("model") == ("its largest component (unet)", weights.component_bytes()["unet"])


@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_each_offload_modes_rule_refuses_below_its_need_and_passes_at_it(weights, offload):
    need = weights.need(offload, 4)[1] * (1 + MARGIN)
    check_fit(weights, CUDA, torch.float32, offload, int(need) + 1)
    with pytest.raises(BackendUnavailable) as refused:
        check_fit(weights, CUDA, torch.float32, offload, int(need) - 1, model="tiny-sd")
    message = str(refused.value)
    assert message.startswith("tiny-sd does not fit on cuda: ") and " GiB in float32" in message
    assert f"{need / memory.GIB:.2f} GiB with 20% for activations" in message
    assert "--dtype fp16 (or bf16)" in message  # half the bytes fit where one byte too few was free
    later = {"none": "--offload model (", "model": "--offload sequential (", "sequential": None}[offload]
    assert later is None or later in message


def test_what_is_suggested_is_what_would_fit(weights):
    whole = weights.total(4) * (1 + MARGIN)
    for dtype, free in ((torch.float32, whole * 0.51), (torch.float16, whole * 0.49)):
        message = refusal(weights, CUDA, dtype, "none", free)
        fits = {"--dtype fp16 (or bf16) (": dtype.itemsize == 4 and weights.total(2) * (1 + MARGIN) <= free,
                **{f"--offload {mode} (": weights.need(mode, dtype.itemsize)[1] * (1 + MARGIN) <= free
                   for mode in ("model", "sequential")}}
        assert "it would fit with " in message and {flags: flags in message for flags in fits} == fits
    tiny = weights.need("sequential", 2)[1] * (1 + MARGIN) / 2
    message = refusal(weights, CUDA, torch.float32, "none", tiny)
    assert "even --offload sequential --dtype fp16 (or bf16) needs" in message
    message = refusal(weights, CPU, torch.float32, "none", whole * 0.51)  # no offload suggested on the CPU
    assert "it would fit with --dtype bf16 (" in message and "--offload" not in message


def test_offloading_needs_the_whole_pipeline_in_host_memory(weights):
    total = weights.total(2)
    check_fit(weights, CUDA, torch.float16, "model", 2 ** 40, host=total)
    with pytest.raises(BackendUnavailable, match="does not fit in host memory: --offload model keeps the whole"):
        check_fit(weights, CUDA, torch.float16, "model", 2 ** 40, host=total - 1)
    check_fit(weights, CUDA, torch.float16, "none", 2 ** 40, host=0)  # without offload the host is not asked


def refusal(weights, device, dtype, offload, free):
    with pytest.raises(BackendUnavailable) as refused:
        check_fit(weights, device, dtype, offload, int(free))
    return str(refused.value)


def test_a_size_that_cannot_be_read_skips_the_check(sd, tmp_path, monkeypatch, caplog):
    import huggingface_hub

    caplog.set_level(logging.INFO, logger="depthfusion.memory")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert model_weights("depthfusion-tests/not-cached") is None
    assert "not in the Hugging Face cache yet" in caplog.text
    bin_only = tmp_path / "bin-only"
    shutil.copytree(sd, bin_only)
    (bin_only / "unet" / "diffusion_pytorch_model.safetensors").rename(bin_only / "unet" / "diffusion_pytorch_model.bin")
    assert model_weights(str(bin_only)) is None and "no safetensors weights for unet" in caplog.text
    monkeypatch.setattr(memory, "free_memory", lambda device: 1)
    memory.check_model_fits(str(bin_only), CPU, torch.float32)  # unknown size: no refusal
    broken = tmp_path / "broken"
    shutil.copytree(sd, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 8 + b"not a header")
    assert model_weights(str(broken)) is None and "cannot read the weights' sizes" in caplog.text
    memory.check_model_fits(str(broken), CPU, torch.float32)


def test_a_cached_hub_snapshot_is_read_without_fetching(sd, weights, tmp_path, monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--depthfusion-tests--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(sd, repo / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert model_weights("depthfusion-tests/tiny-sd").component_bytes() == weights.component_bytes()


def test_a_replaced_unet_counts_instead_of_the_pipelines(sd, weights, tmp_path, monkeypatch):
    other = tmp_path / "other"
    (other / "unet").mkdir(parents=True)
    shutil.copy(sd / "unet" / "config.json", other / "unet")
    from safetensors.torch import save_file

    save_file({"big.weight": torch.zeros(4096, 1024)}, other / "unet" / "diffusion_pytorch_model.safetensors")
    monkeypatch.setattr(memory, "free_memory", lambda device: weights.total(4) * 2)
    memory.check_model_fits(str(sd), CPU, torch.float32)
    with pytest.raises(BackendUnavailable, match="tiny-sd does not fit on cpu: the whole pipeline"):
        memory.check_model_fits(str(sd), CPU, torch.float32, replace={"unet": str(other)}, label="tiny-sd")
    base = tmp_path / "base"  # as diffusers caches a base whose unet is replaced: without unet/ (never fetched)
    shutil.copytree(sd, base, ignore=lambda folder, names: ["unet"] if folder == str(sd) else [])
    with pytest.raises(BackendUnavailable, match="base does not fit on cpu: the whole pipeline"):
        memory.check_model_fits(str(base), CPU, torch.float32, replace={"unet": str(other)}, label="base")


# ------------------------------------------------------------------ through the backend and the CLI


def test_a_model_too_big_for_the_free_memory_is_refused_before_loading(sd, weights, estimator, monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: weights.total(4))  # fp32 needs 20 % more
    monkeypatch.setattr("generator.backends.pano._load_pipeline", never)
    with pytest.raises(BackendUnavailable, match="does not fit on cpu: the whole pipeline is .* GiB in float32, .* "
                                                 "with 20% for activations, .* free; it would fit with --dtype bf16"):
        load_backend(str(sd), estimator=str(estimator), device="cpu")


def never(*args, **kwargs):
    raise AssertionError("refused before loading")


def test_offload_on_the_cpu_and_for_ldm3d_or_demo_is_refused_before_loading(sd, estimator, monkeypatch, tmp_path,
                                                                             caplog):
    monkeypatch.setattr("generator.backends.pano._load_pipeline", never)
    monkeypatch.setattr("generator.backends._load_ldm3d", never)
    for offload in ("model", "sequential"):
        with pytest.raises(BackendUnavailable, match=f"--offload {offload} moves weights between host memory and "
                                                     "a GPU; on the CPU they are in host memory already"):
            load_backend(str(sd), estimator=str(estimator), device="cpu", offload=offload)
    with pytest.raises(BackendUnavailable, match="--offload model is for the panorama backend's diffusers pipelines"):
        load_backend(str(tmp_path), offload="model")  # no model_index.json: an LDM3D folder
    with pytest.raises(BackendUnavailable, match="--offload sequential is for the panorama backend"):
        load_backend("auto", offload="sequential")
    with pytest.raises(BackendUnavailable, match="the demo backend has no weights to offload"):
        load_backend("demo", offload="model")
    out = tmp_path / "frame"
    assert main(["generate", "a room", "-o", str(out), "--model", str(sd), "--estimator", str(estimator),
                 "--device", "cpu", "--offload", "model", "--no-library"]) == 2
    assert "--offload model moves weights between host memory and a GPU" in caplog.text and not out.exists()


def test_the_offload_flag_reaches_the_backend(monkeypatch, tmp_path):
    given = []

    def load(model, **options):
        given.append(options)
        raise BackendUnavailable("stop here")

    monkeypatch.setattr("generator.backends.load_backend", load)
    for verb in (["generate", "a room", "-o", str(tmp_path / "x")], ["serve"]):
        for flags, expected in (([], None), (["--offload", "model"], "model"),
                                (["--offload", "sequential"], "sequential")):
            assert main([*verb, "--model", "some-folder", "--no-library", *flags]) == 2
            assert given.pop().get("offload") == expected
    with pytest.raises(SystemExit):
        main(["generate", "a room", "-o", str(tmp_path / "x"), "--offload", "disk"])


def test_place_calls_the_offload_diffusers_names():
    class Pipe:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda **kwargs: self.calls.append((name, kwargs))

        def to(self, device):
            self.calls.append(("to", device))

    for offload, call in (("none", ("to", CUDA)), ("model", ("enable_model_cpu_offload", {"device": CUDA})),
                          ("sequential", ("enable_sequential_cpu_offload", {"device": CUDA}))):
        pipe = Pipe()
        place(pipe, CUDA, offload)
        assert pipe.calls == [call]


def test_a_frame_records_its_peak_memory(sd, estimator, tmp_path):
    out = tmp_path / "frame"
    assert main(["generate", "a misty forest", "-o", str(out), "--model", str(sd), "--estimator", str(estimator),
                 "--device", "cpu", "--width", "128", "--height", "64", "--steps", "2", "--seed", "1",
                 "--no-library"]) == 0
    info = json.loads((out / "metadata.json").read_text())["backend_info"]
    assert info["peak_memory_of"] == "process peak RSS" and info["peak_memory_gib"] > 0
    assert info["offload"] == "none"  # how the weights reached the device


def test_only_backends_on_a_torch_device_record_peak_memory():
    info = {}
    memory.record_peak(None, info)
    assert info == {}
    memory.record_peak(CPU, info)
    assert set(info) == {"peak_memory_gib", "peak_memory_of"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="--offload runs only on a CUDA GPU (docs/models.md#memory)")
def test_gpu_offload_keeps_the_weights_off_the_gpu_and_makes_the_same_frame(sd, weights, estimator):
    import gc

    import numpy as np

    from generator.frames import make_frame
    from td_bridge.params import validate_generation

    params = validate_generation({"prompt": "a misty forest", "seed": 1, "width": 128, "height": 64, "steps": 2})
    frames, loaded = {}, {}
    for offload in ("none", "model", "sequential"):
        backend = load_backend(str(sd), estimator=str(estimator), device="cuda", dtype="fp32", offload=offload)
        loaded[offload] = torch.cuda.memory_allocated()
        _, frames[offload] = make_frame(backend, params, lambda step, total: None, lambda: False)
        assert frames[offload].info["peak_memory_of"] == "torch.cuda.max_memory_allocated"
        assert frames[offload].info["offload"] == offload
        assert frames[offload].info["peak_memory_gib"] > 0
        del backend
        gc.collect()
        torch.cuda.empty_cache()
    for offload in ("model", "sequential"):
        assert loaded[offload] < loaded["none"] - weights.total(4) / 2  # the pipeline waits in host memory
        assert np.abs(frames[offload].rgb.astype(int) - frames["none"].rgb.astype(int)).max() <= 1
