"""The model registry: task models and roadmap steps are listed before their modules are imported, and built
from them on first use."""

import importlib
import subprocess
import sys

from convnext.models import convnext as registry


def test_lazy_names_match_what_their_modules_register():
    """Each module of ``LAZY_MODELS`` registers exactly the names listed for it, in place: the list keeps its
    order, and no placeholder is left once the modules are imported."""
    for module in registry.LAZY_MODELS:
        importlib.import_module(module)
    expected = list(registry.MODEL_ARCHS) + [name for names in registry.LAZY_MODELS.values() for name in names]
    assert registry.list_models() == expected
    assert not [name for name, builder in registry._BUILDERS.items() if isinstance(builder, str)]
    assert registry.list_models("upernet_*")[0] == "upernet_convnext_tiny"


def test_listing_imports_no_task_model_and_building_imports_its_module():
    code = """
import sys, torch
from convnext.models import build_model, list_models
names = list_models()
assert "maskrcnn_convnext_tiny" in names and "roadmap_kernel_7" in names and "upernet_convnext_xlarge" in names
assert not {"convnext.models.mask_rcnn", "convnext.models.upernet", "convnext.models.roadmap",
            "torchvision.models.detection"} & set(sys.modules)
with torch.device("meta"):
    model = build_model("upernet_convnext_tiny", num_classes=5)
assert type(model).__name__ == "UperNet" and model.model_name == "upernet_convnext_tiny"
assert list_models() == names
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
