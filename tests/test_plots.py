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


def test_curves_show_the_lr_and_mark_the_best_epoch(tmp_path, monkeypatch):
    from convnext import plots

    history = [dict(epoch=e, train_loss=2.0 / e, val_loss=2.1 / e, val_top1=top1, val_top5=100.0, lr=1e-3 / e)
               for e, top1 in ((1, 40.0), (2, 70.0), (3, 65.0))]
    drawn = {}
    real = plots.pyplot

    def spying_pyplot():
        plt = real()
        subplots = plt.subplots

        def keep(*args, **kwargs):
            fig, axes = subplots(*args, **kwargs)
            drawn["axes"] = axes
            return fig, axes

        monkeypatch.setattr(plt, "subplots", keep)
        return plt

    monkeypatch.setattr(plots, "pyplot", spying_pyplot)
    plots.plot_curves(history, tmp_path / "curves.png", num_classes=3)
    loss, accuracy, lr = drawn["axes"]
    assert lr.get_title().startswith("learning rate") and (tmp_path / "curves.png").stat().st_size > 0
    labels = [line.get_label() for line in accuracy.lines]
    assert "top-5" not in labels  # 3 classes: top-5 is always 100%
    assert "best (epoch 2)" in labels and accuracy.get_legend() is not None


def test_a_figure_that_cannot_be_written_leaves_the_old_picture_and_no_temporary_file(tmp_path, monkeypatch):
    """Issue 21: a full disk while drawing (``roadmap --plot``, curves, demos) left a partial or temporary file."""
    import errno

    import pytest
    from matplotlib.figure import Figure

    from convnext.errors import UserError
    from convnext.plots import save_figure

    path = tmp_path / "r.png"
    path.write_bytes(b"old")
    fig = Figure()
    fig.add_subplot().plot([1, 2])

    def full_disk(self, fname, **kwargs):
        open(fname, "wb").write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(UserError, match="disk holding .* is full"):
        save_figure(fig, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["r.png"]
    monkeypatch.undo()
    save_figure(fig, tmp_path / "r.svg")
    assert (tmp_path / "r.svg").read_text().lstrip().startswith("<?xml")
