"""Which files an LDM3D model needs, the Hugging Face cache, `python -m generator download` and what every
missing or misplaced file is told as. The hub is never reached: huggingface_hub's listing and download calls are
replaced by fakes that lay files out in a temporary cache exactly as huggingface_hub does (blobs/, snapshots/
links, refs/)."""

import hashlib
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import huggingface_hub
import tiny_ldm3d
from generator.__main__ import main
from generator.backends import BackendUnavailable, load_backend
from generator.backends.ldm3d_files import needed_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Intel/ldm3d-pano's file layout: both weight formats and a safety checker (sizes: fp32 parameter counts × 4).
PANO = {
    ".gitattributes": 1_500, "README.md": 6_000, "model_index.json": 600,
    "feature_extractor/preprocessor_config.json": 500,
    "safety_checker/config.json": 4_800, "safety_checker/model.safetensors": 1_215_981_830,
    "safety_checker/pytorch_model.bin": 1_216_064_769,
    "scheduler/scheduler_config.json": 500,
    "text_encoder/config.json": 600, "text_encoder/model.safetensors": 492_265_874,
    "text_encoder/pytorch_model.bin": 492_305_335,
    "tokenizer/merges.txt": 524_619, "tokenizer/special_tokens_map.json": 500, "tokenizer/tokenizer_config.json": 800,
    "tokenizer/vocab.json": 1_059_962,
    "unet/config.json": 1_800, "unet/diffusion_pytorch_model.safetensors": 3_438_167_540,
    "unet/diffusion_pytorch_model.bin": 3_438_354_725,
    "vae/config.json": 700, "vae/diffusion_pytorch_model.safetensors": 334_643_268,
    "vae/diffusion_pytorch_model.bin": 334_707_217,
}
PANO_NEEDED = [
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors"]


def test_needed_files_of_intel_layouts():
    assert needed_files(PANO) == PANO_NEEDED
    assert (round(sum(PANO[f] for f in PANO_NEEDED) / 1e9, 1), round(sum(PANO.values()) / 1e9, 1)) == (4.3, 11.0)
    variants = {"text_encoder/model.fp16.safetensors": 1, "unet/diffusion_pytorch_model.non_ema.safetensors": 1}
    assert needed_files({**PANO, **variants}) == PANO_NEEDED
    bin_only = {f: s for f, s in PANO.items() if not f.startswith("unet/diffusion_pytorch_model.safetensors")}
    assert "unet/diffusion_pytorch_model.bin" in needed_files(bin_only)
    assert "unet/diffusion_pytorch_model.safetensors" not in needed_files(bin_only)
    sharded = {"unet/diffusion_pytorch_model.safetensors.index.json": 1, "unet/diffusion_pytorch_model-00001-of-00002"
               ".safetensors": 1, "unet/diffusion_pytorch_model-00002-of-00002.safetensors": 1, "unet/x/deep.json": 1}
    assert needed_files(sharded) == sorted(set(sharded) - {"unet/x/deep.json"})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_ldm3d.build(tmp_path_factory.mktemp("src") / "tiny-4c", vae_channels=4)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, and the hub out of reach: any call that would go online fails the test."""
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))

    def offline(*args, **kwargs):
        raise AssertionError("the test tried to reach the hub")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, offline)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    return folder


def put_in_cache(cache: Path, repo: str, source: Path, files=None, commit=COMMIT, ref="main") -> Path:
    """Lay ``files`` of ``source`` (default: all) out as huggingface_hub does; returns the snapshot folder."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    for name in files if files is not None else tiny_ldm3d_files(source):
        data = (source / name).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def tiny_ldm3d_files(source: Path) -> list[str]:
    return sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())


class FakeHub:
    """huggingface_hub's listing and download calls over a local model folder, recording what was asked."""

    def __init__(self, monkeypatch, cache: Path, repo: str, source: Path, extra: dict[str, int]):
        self.cache, self.repo, self.source = cache, repo, source
        self.listing = {**{f: (source / f).stat().st_size for f in tiny_ldm3d_files(source)}, **extra}
        self.allow_patterns: list[str] | None = None
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", self.model_info)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def model_info(self, repo_id, revision=None, files_metadata=False):  # set on HfApi as a bound method
        assert repo_id == self.repo and files_metadata
        return SimpleNamespace(sha=COMMIT, siblings=[SimpleNamespace(rfilename=f, size=s)
                                                     for f, s in self.listing.items()])

    def hf_hub_download(self, repo_id, filename, revision=None):
        return str(put_in_cache(self.cache, repo_id, self.source, [filename]) / filename)

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None):
        self.allow_patterns = allow_patterns
        return str(put_in_cache(self.cache, repo_id, self.source, allow_patterns))


def test_download_fetches_exactly_what_the_loader_needs(tiny, cache, monkeypatch, capsys):
    # the tiny model plus the files of Intel's layout that the loader must not fetch
    extra = {f: s for f, s in PANO.items() if f not in PANO_NEEDED and not f.startswith("tokenizer/")}
    extra = {f: s for f, s in extra.items() if not (tiny / f).exists()}
    hub = FakeHub(monkeypatch, cache, "Intel/ldm3d-pano", tiny, extra)
    assert main(["download", "Intel/ldm3d-pano"]) == 0
    assert hub.allow_patterns == tiny_ldm3d_files(tiny)  # every file of the tiny model, none of the extras
    assert "serve it with --model Intel/ldm3d-pano" in capsys.readouterr().out
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda *a, **k: pytest.fail("went online"))
    backend = load_backend("Intel/ldm3d-pano", local_files_only=True)
    assert backend.name == "ldm3d" and backend.variant.channels == 4


def test_download_refuses_ldm3d_sr_from_its_index_before_any_weights(tmp_path, cache, monkeypatch, caplog):
    sr = tiny_ldm3d.build(tmp_path / "sr", unet_in_channels=8, pipeline="StableDiffusionUpscaleLDM3DPipeline")
    hub = FakeHub(monkeypatch, cache, "Intel/ldm3d-sr", sr, {"low_res_scheduler/scheduler_config.json": 400})
    assert main(["download", "Intel/ldm3d-sr"]) == 2
    assert hub.allow_patterns is None  # snapshot_download never ran
    assert "is ldm3d-sr (StableDiffusionUpscaleLDM3DPipeline, says its model_index.json)" in caplog.text


def test_download_names_a_revision_the_hub_does_not_have(cache, monkeypatch, caplog):
    import httpx2
    from huggingface_hub.errors import RevisionNotFoundError

    def model_info(api, repo_id, revision=None, files_metadata=False):
        response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
        raise RevisionNotFoundError("404 Revision Not Found", response=response)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    assert main(["download", "Intel/ldm3d-pano", "--revision", "v9"]) == 2
    assert "Intel/ldm3d-pano has no revision 'v9' on the hub" in caplog.text
    assert main(["download", "not a hub id"]) == 2 and "is not a hub id" in caplog.text


def expect_unavailable(model: str, *fragments: str, **options) -> str:
    with pytest.raises(BackendUnavailable) as info:
        load_backend(model, local_files_only=True, **options)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "huggingface-cli" not in message
    return message


def test_nothing_cached_names_the_cache_folder_and_the_download_command(cache):
    expect_unavailable("Intel/ldm3d-pano", f"nothing of Intel/ldm3d-pano is in the Hugging Face cache (searched "
                       f"{cache})", "`python -m generator download Intel/ldm3d-pano`", "`hf download Intel/ldm3d-pano`")


def test_a_revision_that_is_not_cached_lists_those_that_are(tiny, cache):
    put_in_cache(cache, "Intel/ldm3d-4c", tiny)
    expect_unavailable("Intel/ldm3d-4c", "in the Hugging Face cache", "but not at revision v2",
                       f"cached: main → {COMMIT[:8]}", "download Intel/ldm3d-4c --revision v2", revision="v2")
    expect_unavailable("Intel/ldm3d-4c", "not at revision " + "f" * 40, revision="f" * 40)
    assert load_backend("Intel/ldm3d-4c", local_files_only=True, revision=COMMIT).name == "ldm3d"


def test_an_interrupted_download_says_what_is_missing_and_how_to_finish(tiny, cache):
    files = [f for f in tiny_ldm3d_files(tiny) if not f.startswith("unet/diffusion")]
    snapshot = put_in_cache(cache, "Intel/ldm3d-pano", tiny, files)
    (snapshot.parents[1] / "blobs" / "4f2a.incomplete").write_bytes(b"partial")
    expect_unavailable("Intel/ldm3d-pano", f"the cached Intel/ldm3d-pano (revision main, {snapshot}) is incomplete: "
                       "no unet/ weights", "an interrupted download, 1 partial files in blobs/",
                       "finish it with `python -m generator download Intel/ldm3d-pano`")
    shutil.rmtree(snapshot)  # interrupted before the first file completed
    expect_unavailable("Intel/ldm3d-pano", "has no files yet", "interrupted download")


def test_a_cache_folder_or_a_snapshot_with_dangling_links_is_told_apart(tiny, cache, tmp_path):
    snapshot = put_in_cache(cache, "Intel/ldm3d-pano", tiny)
    repo_dir = snapshot.parents[1]
    expect_unavailable(str(repo_dir), f"{repo_dir} is a Hugging Face cache folder, not a model folder",
                       "pass the hub id Intel/ldm3d-pano", f"its snapshot folder {snapshot}")
    copied = tmp_path / "copied-snapshot"
    shutil.copytree(snapshot, copied, symlinks=True)  # the links now point at a blobs/ folder that is not there
    shutil.rmtree(repo_dir / "blobs")
    needed = len(needed_files(tiny_ldm3d_files(tiny)))
    expect_unavailable(str(copied), f"{copied}: {needed} needed files are links to files that are not there",
                       "cp -rL")


def test_ldm3d_sr_folder_is_refused_from_its_index_before_loading(tmp_path):
    sr = tiny_ldm3d.build(tmp_path / "sr", unet_in_channels=8, pipeline="StableDiffusionUpscaleLDM3DPipeline")
    for weights in sr.glob("*/*.safetensors"):
        weights.write_bytes(b"not weights: loading them would fail differently")
    expect_unavailable(str(sr), "is ldm3d-sr", "an RGBD upscaler, not a text-to-RGBD model")


def test_auto_picks_any_cached_checkpoint_and_says_which_and_why(tiny, cache, caplog):
    caplog.set_level(logging.INFO)
    put_in_cache(cache, "Intel/ldm3d-4c", tiny)
    backend = load_backend("auto", device="cpu")
    assert backend.name == "ldm3d" and backend.model == "Intel/ldm3d-4c"
    assert (f"model auto: Intel/ldm3d-4c, the first of Intel/ldm3d-pano, Intel/ldm3d-4c, Intel/ldm3d found "
            f"complete in the Hugging Face cache {cache}") in caplog.text
    assert "not Intel/ldm3d-pano: nothing of Intel/ldm3d-pano is in the Hugging Face cache" in caplog.text


def test_auto_with_nothing_cached_on_a_cpu_uses_the_demo_and_says_where_it_looked(cache, caplog):
    backend = load_backend("auto", device="cpu")
    assert backend.name == "demo"
    assert f"nothing of Intel/ldm3d is in the Hugging Face cache (searched {cache})" in caplog.text
    assert "using the demo backend" in caplog.text.lower() and "never starts a multi-GB download" in caplog.text


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_loading_says_one_line(tiny, tmp_path, capfd, caplog, weights):
    """No transformers weight-loading bar, no diffusers warnings (unsafe serialization for .bin, a cast of modules
    already in their dtype, accelerate not installed): one line says what loads."""
    caplog.set_level(logging.INFO)
    model = shutil.copytree(tiny, tmp_path / "model")
    if weights == "bin":
        tiny_ldm3d.to_bin(model)
    capfd.readouterr()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_log = logging.getLogger("diffusers")  # it does not propagate to the root logger
    diffusers_log.addHandler(handler)
    try:
        load_backend(str(model))
    finally:
        diffusers_log.removeHandler(handler)
    printed = capfd.readouterr().err
    assert "Loading weights" not in printed and "unsafe" not in printed.lower()
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    kind = "safetensors" if weights == "safetensors" else "PyTorch .bin"
    assert f"loading LDM3D {model} from {model} ({kind} weights)" in caplog.text
