"""`mcir export`: a checkpoint as a verified ONNX graph ([0, 1] images in and out)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mcir_cli.cli.app import app, console, handle_errors


@app.command()
@handle_errors
def export(
    file: Path = typer.Argument(..., help="Checkpoint (.pth/.pt/.safetensors, e.g. a run's model.safetensors); architecture auto-detected."),
    onnx: Path = typer.Option(..., "--onnx", help="New ONNX file (must not exist; written only after it passes the check).", rich_help_panel="Output"),
    fp16: bool = typer.Option(False, "--fp16", help="Half-precision graph (float16 weights, input and output); checked against the fp32 torch model.", rich_help_panel="Output"),
    image: Optional[Path] = typer.Option(None, "--image", help="Real image the graph is checked on (default: scikit-image's bundled photo 'chelsea').", rich_help_panel="Check"),
) -> None:
    """Export a model to ONNX (dynamic batch, height and width) and check it in onnxruntime.

    Example: mcir export runs/dctlsa-mcir/model.safetensors --onnx dctlsa.onnx

    The graph takes RGB (or grey) N x C x H x W images in [0, 1] and gives the restored image in [0, 1]: the model's own normalisation and the padding its windows need are inside. Before the file is written, onnxruntime (CPU) runs it on crops of a real image at the traced size and at two other sizes (27x41 and 45x38, batch 2) and must match torch within the printed tolerance.
    """
    from mcir_cli.models.export import export_onnx

    report = export_onnx(file, onnx, fp16=fp16, image=image)
    table = Table(title=f"onnxruntime (CPU) vs torch (fp32) on {report.image}",
                  caption=f"tolerance: max |diff| <= {report.tolerance:g} x max(1, max |torch output|), [0, 1] units")
    for col in ("batch x height x width", "max |diff|", "check"):
        table.add_column(col, justify="right")
    for c in report.checks:
        table.add_row(f"{c.batch}x{c.height}x{c.width}", f"{c.max_diff:.2e}", "ok")
    console.print(table)
    if report.batch_note:
        console.print(f"[yellow]{report.batch_note}[/]", highlight=False)
    console.print(f"wrote {report.path} ({report.architecture} x{report.scale}, ONNX opset {report.opset}, "
                  f"{'fp16' if report.fp16 else 'fp32'}, {report.seconds:.1f} s)\n{report.contract}",
                  highlight=False, soft_wrap=True)
