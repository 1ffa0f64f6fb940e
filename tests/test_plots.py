import torch

from convnext.plots import plot_augmented, soft_label_text


def test_soft_label_text_names_the_mixed_classes_largest_first():
    classes = ["cat", "dog", "owl"]
    assert soft_label_text(torch.tensor([0.04, 0.6, 0.36]), classes) == "dog 0.60 + owl 0.36"
    assert soft_label_text(torch.tensor([0.9333, 0.0333, 0.0333]), classes) == "cat 0.93"


def test_augmented_grid_is_written(tmp_path):
    images = torch.randn(4, 3, 16, 16)
    targets = torch.eye(3)[[0, 1, 2, 0]]
    plot_augmented(images, targets, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
