import json

import pytest
import torch
from torch import nn

from convnext.cli import main
from convnext.deploy import benchmark, table12
from convnext.deploy.table12 import PaperRow

# One pair and one lone ConvNeXt, as the paper's XL rows are, at a resolution small enough for a test
TINY_ROWS = (PaperRow("convnext_atto", 32, 1.0, 100.0, "swin_tiny_patch4_window7_224", 2.0, 50.0),
             PaperRow("convnext_femto", 32, 1.5, 80.0))


def tiny_swin(name: str) -> nn.Module:
    """timm's Swin with the test row's input size and a sliver of its width and depth."""
    import timm

    return timm.create_model(name, img_size=32, window_size=2, embed_dim=8, depths=(1, 1, 1, 1),
                             num_heads=(1, 1, 1, 1), num_classes=10)


@pytest.fixture
def tiny_table(monkeypatch):
    monkeypatch.setattr(benchmark, "ROUND_SECONDS", 0.01)
    monkeypatch.setattr(table12, "ROWS", TINY_ROWS)
    monkeypatch.setitem(benchmark.PEER_BUILDERS, "timm", tiny_swin)


SMALL = ["benchmark", "--table", "12", "--res", "32", "--rounds", "1", "--warmup", "1", "--device", "cpu"]


def test_cli_writes_the_markdown_and_json_with_our_rows_beside_the_papers(tiny_table, tmp_path, capsys):
    assert main([*SMALL, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    markdown = (tmp_path / "table12.md").read_text()
    assert markdown in out and f"wrote {tmp_path / 'table12.md'} and {tmp_path / 'table12.json'}" in out
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0] for line in lines] == ["| Swin-atto (swin_tiny_patch4_window7_224)",
                                                       "| ConvNeXt-atto", "| ConvNeXt-femto"]
    assert "| 50.0 |" in lines[0] and "| 100.0 | 2.00× |" in lines[1] and "| 80.0 |" in lines[2]

    report = json.loads((tmp_path / "table12.json").read_text())
    assert report["settings"] | {"table": 12, "batch": 1, "rounds": 1, "res": [32]} == report["settings"]
    pair, alone = report["rows"]
    assert pair["convnext"]["model"] == "convnext_atto" and pair["convnext"]["params"] == 3_695_520
    assert pair["swin"]["model"] == "swin_tiny_patch4_window7_224" and pair["swin"]["gmacs"] > 0
    expected = pair["convnext"]["img_s"]["median"] / pair["swin"]["img_s"]["median"]
    assert pair["ratio"]["median"] == pytest.approx(expected)  # one round: the per-round ratio is the ratio
    assert pair["paper"]["img_s"] == 100.0 and pair["paper"]["ratio"] == pytest.approx(2.0)
    assert alone["swin"] is None and alone["ratio"] is None and alone["convnext"]["img_s"]["median"] > 0
    assert "ratio" not in alone["paper"]


def test_json_goes_to_stdout_alone(tiny_table, tmp_path, capsys):
    assert main([*SMALL, "--model", "femto", "--output", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [row["convnext"]["model"] for row in report["rows"]] == ["convnext_femto"]
    assert json.loads((tmp_path / "table12.json").read_text())["rows"] == report["rows"]
    assert "wrote" in captured.err


def test_a_swin_neither_library_has_is_reported_not_measured(tiny_table, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(benchmark.PEER_BUILDERS, "timm", lambda name: f"timm has no {name}")
    monkeypatch.setitem(benchmark.PEER_BUILDERS, "torchvision", lambda name: "torchvision does not import (test)")
    assert main([*SMALL, "--model", "atto", "--output", str(tmp_path), "--json"]) == 0
    row, = json.loads(capsys.readouterr().out)["rows"]
    assert row["swin"] is None and row["ratio"] is None
    assert row["skipped"] == "timm has no swin_tiny_patch4_window7_224; torchvision does not import (test)"
    assert "Swin-atto at 32 not measured: timm has no" in (tmp_path / "table12.md").read_text()


def test_torchvision_stands_in_where_timm_lacks_the_swin(monkeypatch):
    asked = []
    monkeypatch.setitem(benchmark.PEER_BUILDERS, "timm", lambda name: "timm does not import (test)")
    monkeypatch.setitem(benchmark.PEER_BUILDERS, "torchvision", lambda name: asked.append(name) or nn.Identity())
    assert isinstance(table12.build_swin("swin_small_patch4_window7_224"), nn.Identity) and asked == ["swin_s"]
    assert table12.build_swin("swin_large_patch4_window12_384") == "timm does not import (test)"


def test_the_papers_figures_give_its_printed_gains():
    """The table transcribes throughputs; their ratios must round to the paper's printed "+47%" etc."""
    rows = table12.PAPER_TABLE_12
    assert [(row.size, row.res) for row in rows] == [("tiny", 224), ("small", 224), ("base", 224), ("base", 384),
                                                     ("large", 224), ("large", 384), ("xlarge", 224), ("xlarge", 384)]
    gains = [round(100 * (row.img_s / row.swin_img_s - 1)) for row in rows if row.swin_img_s]
    assert gains == [47, 49, 46, 39, 40, 34]
    assert all(f"window{12 if row.res == 384 else 7}_{row.res}" in row.swin for row in rows if row.swin)


def test_swin_gmacs_count_its_attention_as_the_paper_does():
    with torch.device("meta"):
        entry = table12._entry("swin", table12.build_swin("swin_tiny_patch4_window7_224"), 224)
    assert entry["gmacs"] == pytest.approx(4.49, abs=0.01) and entry["params"] == 28_288_354  # paper: 4.5G


def test_paper_settings_turn_on_tf32_for_cuda_only_while_measuring():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    with table12.paper_settings(torch.device("cpu")):
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark) == before
    with table12.paper_settings(torch.device("cuda")):  # flags only: no CUDA device needed
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.allow_tf32
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark) == before


@pytest.mark.parametrize("args, message", [
    (["--table", "3"], "--table takes 12"),
    (["--table", "12", "--model", "huge"], "--model with --table 12 takes sizes from tiny, small"),
    (["--table", "12", "--res", "256"], "--res with --table 12 takes 224 and/or 384"),
    (["--table", "12", "--res", "224,x"], "--res with --table 12 takes"),
    (["--table", "12", "--model", "tiny", "--res", "384"], "has ConvNeXt-T at 224 only"),
    (["--table", "12", "--dtype", "bf16", "--train"], "leave out --dtype, --train"),
    (["--table", "12", "--peers", "hf"], "leave out --peers"),
    (["--table", "12", "--batch", "1,8"], "one --batch size"),
    (["--table", "12", "--rounds", "0", "--device", "cpu"], "need a positive batch and round count"),
    (["--output", "somewhere", "--model", "convnext_atto"], "--output is where --table 12 writes"),
    ([], "give --model"),
    (["--model", "convnext_atto", "--res", "224,384"], "--res must be one whole number"),
])
def test_bad_input_is_one_line(capsys, args, message):
    assert main(["benchmark", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
