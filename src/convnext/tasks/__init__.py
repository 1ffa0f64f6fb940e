"""The tasks trained and evaluated through ``convnext.engine``: classification, segmentation, detection, and
the robustness benchmarks."""
