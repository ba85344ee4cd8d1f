"""Our FID Inception-v3 (random weights: shapes, names, strict loading) and the CLIP scorer on a tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.evaluate import inception
from generator.evaluate.clip import ClipScorer
from generator.evaluate.inception import FIDInceptionV3, InceptionFeatures, load_inception
from tests import tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# torchvision documents 27,161,264 parameters for its Inception-v3 (1000 classes, with the auxiliary classifier);
# the FID variant drops the auxiliary classifier (3,326,696: conv 768→128 1×1 and 128→768 5×5 with their
# batch norms, fc 768→1000) and has 8 more classes (8·2048 + 8).
FID_INCEPTION_PARAMETERS = 27_161_264 - 3_326_696 + 8 * 2048 + 8
DOCUMENTED_KEYS = ("Conv2d_1a_3x3.conv.weight", "Conv2d_4a_3x3.bn.running_var", "Mixed_5b.branch5x5_2.conv.weight",
                   "Mixed_6a.branch3x3dbl_3.bn.bias", "Mixed_6e.branch7x7dbl_5.conv.weight",
                   "Mixed_7a.branch7x7x3_4.bn.running_mean", "Mixed_7c.branch3x3dbl_3b.conv.weight",
                   "Mixed_7b.branch_pool.bn.weight", "fc.weight", "fc.bias")


@pytest.fixture(scope="module")
def network() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_the_network_has_the_documented_names_and_size(network):
    state = {k for k in network.state_dict() if not k.endswith("num_batches_tracked")}
    assert sum(p.numel() for p in network.parameters()) == FID_INCEPTION_PARAMETERS
    assert len(state) == 94 * 5 + 2  # 94 convolutions with their batch norms, then fc (as the docstring says)
    assert set(DOCUMENTED_KEYS) <= state
    assert tuple(network.state_dict()["fc.weight"].shape) == (1008, 2048)
    stems = {k.split(".")[0] for k in state}
    assert stems == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "fc"} | {
        f"Mixed_{b}" for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")}


def test_a_saved_state_dict_loads_back_strictly_and_gives_the_same_features(network, tmp_path, monkeypatch):
    path = tmp_path / inception.WEIGHTS_FILE
    torch.save({k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    loaded = load_inception(path)
    FIDInceptionV3().load_state_dict(loaded.state_dict(), strict=True)
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in loaded.state_dict().items())
    # real runs resize to 299; 75 px (Inception-v3's smallest input) keeps this CPU test at a sixteenth of the work
    monkeypatch.setattr(inception, "INPUT_SIZE", 75)
    features = InceptionFeatures(loaded, "random", batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    pool, logits = features(images)  # two sizes: each resized on its own
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and np.isfinite(pool).all()
    assert not np.allclose(pool[0], pool[1])
    with torch.inference_mode():  # the logits are the fc layer's output without its bias
        biased = network.fc(torch.from_numpy(pool).float()).double().numpy()
    assert np.allclose(logits, biased - network.fc.bias.detach().double().numpy(), atol=1e-4)


def test_wrong_weights_files_are_refused_with_the_reason(network, tmp_path):
    state = network.state_dict()
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, broken)
    with pytest.raises(ValueError, match=r"missing \['fc.bias', 'fc.weight'\]"):
        load_inception(broken)
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048)}, broken)
    with pytest.raises(ValueError, match="wrong shapes"):
        load_inception(broken)
    (tmp_path / "text.pth").write_text("not a state dict")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        load_inception(tmp_path / "text.pth")
    with pytest.raises(OSError, match="no such Inception weights file"):
        load_inception(tmp_path / "absent.pth")


def test_offline_download_error_names_the_url_and_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHFUSION_CACHE", str(tmp_path / "cache"))
    target = inception.cache_path()
    assert target == tmp_path / "cache" / "inception" / inception.WEIGHTS_FILE
    with pytest.raises(OSError) as caught:
        inception.fetch_weights(url="http://127.0.0.1:9/" + inception.WEIGHTS_FILE)  # nothing listens on port 9
    assert "http://127.0.0.1:9/" in str(caught.value) and str(target) in str(caught.value)
    assert "--inception-weights" in str(caught.value) and not target.exists()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> ClipScorer:
    return ClipScorer.load(str(tiny_clip.build(tmp_path_factory.mktemp("clip") / "tiny-clip")), device="cpu")


def test_clip_scores_are_100_times_the_models_own_cosine_floored_at_zero(clip):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(5)]
    captions = ["a misty forest", "the desert at night", "a room", "a sunlit courtyard", "dawn"]
    scores = clip.scores(images, captions)
    inputs = clip.processor(text=captions, images=[__import__("PIL.Image").Image.fromarray(x) for x in images],
                            return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = clip.network(**inputs)
    cos = out.logits_per_image.diagonal().double() / out.logits_per_image.new_tensor(
        clip.network.logit_scale.exp().item()).double()
    assert np.allclose(scores, np.maximum(100 * cos.numpy(), 0), atol=1e-3)
    assert scores.shape == (5,) and (scores >= 0).all() and scores.max() > 0
    with pytest.raises(ValueError, match="5 images but 4 captions"):
        clip.scores(images, captions[:4])
