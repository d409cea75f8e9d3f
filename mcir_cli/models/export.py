"""`mcir export`: a checkpoint as an ONNX graph that takes and gives [0, 1] images, checked
in onnxruntime (CPU) against torch before it is written.

The graph holds what mcir's `Restorer` does around the network (the model's own I/O
normalisation) and the padding to the sizes the network needs, so any N x C x H x W input
in [0, 1] works. Shape arithmetic that an architecture turns into Python numbers is
traced as constants; the graph is therefore run at sizes other than the traced one (and
at another batch size) and compared with torch. A batch size that the architecture bakes
in (DCTLSA's `window_reverse` calls `int()` on a shape) is declared fixed at 1 and said.

Exporter: torch's TorchScript-based `torch.onnx.export(dynamo=False)`. Measured here
(2-core CPU, torch 2.14.1): the dynamo exporter took 9.4 s for IMDN (TorchScript: 6.8 s),
did not finish SwinIR-light in 300 s, and specialises the data-dependent padding of
window-attention models at trace time (it raises on SwinIR's `if pad_h or pad_w`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcir_cli import __version__
from mcir_cli._helpers.fsutil import atomic_write, sha256_file, writable_target
from mcir_cli.data.demo_data import _photo
from mcir_cli.data.imageio import read_image
from mcir_cli.errors import McirError
from mcir_cli.models.inference import fixed_input_size
from mcir_cli.models.loading import load_checkpoint_model

OPSET = 17
TRACE_SIZE = (32, 32)  # height, width of the traced input (LQ pixels)
CHECK_SIZES = ((27, 41), (45, 38))  # other sizes, odd on purpose (no window or multiple divides them)
# max |onnxruntime - torch| allowed, in [0, 1] units, times max(1, max |torch output|):
# fp32 a tenth of an 8-bit level; fp16 (compared with the fp32 torch model) two levels
TOLERANCE = {False: 4e-4, True: 8e-3}


@dataclass
class SizeCheck:
    batch: int
    height: int
    width: int
    max_diff: float


@dataclass
class ExportReport:
    path: Path
    architecture: str
    scale: int
    channels: int
    opset: int
    fp16: bool
    batch_dynamic: bool
    tolerance: float
    image: str
    checks: list[SizeCheck] = field(default_factory=list)
    seconds: float = 0.0
    batch_note: str = ""

    @property
    def contract(self) -> str:
        dtype = "float16" if self.fp16 else "float32"
        batch = "N" if self.batch_dynamic else "1"
        colour = "RGB order" if self.channels == 3 else "grey" if self.channels == 1 else f"{self.channels} channels"
        out = "HxW" if self.scale == 1 else f"{self.scale}Hx{self.scale}W"
        return (f"input 'input': {dtype} {batch}x{self.channels}xHxW, {colour}, values in [0, 1], any H and W; "
                f"output 'output': {dtype} {batch}x{self.channels}x{out} in [0, 1] (not clamped)")


class OnnxGraph(nn.Module):
    """What is exported: pad to the network's multiple (reflect, bottom/right, as mcir's
    inference pads), the `Restorer` ([0, 1] in and out), crop back to scale x input."""

    def __init__(self, restorer: nn.Module, scale: int, multiple: int) -> None:
        super().__init__()
        self.restorer, self.scale, self.multiple = restorer, scale, multiple

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = self.multiple
        if m > 1:  # written as m * ceil(h / m): the padded size is a multiple in every trace
            x = F.pad(x, (0, m * ((w + m - 1) // m) - w, 0, m * ((h + m - 1) // m) - h), mode="reflect")
        return self.restorer(x)[..., : h * self.scale, : w * self.scale]


def _multiple(loaded: Any) -> int:
    """The size the input must be a multiple of: the model's own requirement and every
    attention window in it (SwinIR, DCTLSA, ... pad to their window inside, in code that
    traces as a constant)."""
    multiple = int(loaded.multiple_of)
    for module in loaded.net.modules():
        window = getattr(module, "window_size", None)
        for w in window if isinstance(window, (tuple, list)) else (window,):
            if isinstance(w, int) and w > 1:
                multiple = math.lcm(multiple, w)
    return multiple


def _sample(image: Path | None, channels: int) -> tuple[Tensor, str]:
    """The real picture the graph is checked on: the user's, or scikit-image's bundled
    photo 'chelsea'; grey models get its BT.601 luma."""
    if image is not None:
        img, name = read_image(image), str(image)
    else:
        img, name = _photo("chelsea"), "scikit-image data.chelsea()"
    if img.shape[0] == 1 and channels == 3:
        img = img.expand(3, -1, -1)
    if channels == 1 and img.shape[0] == 3:
        img = (img * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    need = max(s for hw in (TRACE_SIZE, *CHECK_SIZES) for s in hw)
    if min(img.shape[-2:]) < need + 8:
        raise McirError(f"the check image must be at least {need + 8} x {need + 8} pixels", image)
    return img, name


def _crops(img: Tensor, batch: int, height: int, width: int) -> Tensor:
    """`batch` different real crops of one size (offsets step 8 pixels)."""
    return torch.stack([img[:, 8 * i: 8 * i + height, 8 * i: 8 * i + width] for i in range(batch)]).contiguous()


def _operator(exc: BaseException) -> str:
    """The operator an exporter error names ('aten::foo'), else the error's first line."""
    import re

    text = str(exc)
    m = re.search(r"(aten|prim|onnx)::[A-Za-z0-9_.]+", text)
    return f"operator {m.group(0)}" if m else (text.splitlines() or [type(exc).__name__])[0][:160]


def _trace(graph: nn.Module, path: Path, example: Tensor, opset: int, arch: str) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    out_axes = {0: "batch", 2: "out_height", 3: "out_width"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(path), input_names=["input"], output_names=["output"],
                              opset_version=opset, dynamic_axes={"input": axes, "output": out_axes},
                              dynamo=False, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - every exporter failure is one line naming the operator
        raise McirError(f"{arch} cannot be exported to ONNX opset {opset}: {_operator(exc)}") from None


def _fix_batch(path: Path) -> None:
    """Declare batch 1 on the graph's input and output: the trace (at batch 1) holds the
    batch as a constant somewhere, so other batch sizes must be refused, not miscomputed."""
    import onnx

    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 4  # a failing size is reported, not logged
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _compare(session: Any, reference: nn.Module, x: Tensor, fp16: bool) -> float:
    """max |onnxruntime - torch (fp32)| on one batch; a graph that cannot run is inf."""
    with torch.no_grad():
        want = reference(x).numpy()
    feed = x.numpy().astype(np.float16 if fp16 else np.float32)
    try:
        got = session.run(None, {"input": feed})[0].astype(np.float32)
    except Exception:  # noqa: BLE001 - a traced constant that does not fit this size
        return math.inf
    if got.shape != want.shape:
        return math.inf
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def _verify(path: Path, reference: nn.Module, img: Tensor, fp16: bool, batch: int) -> list[SizeCheck]:
    session = _session(path)
    checks = []
    for (h, w), b in ((TRACE_SIZE, 1), *((hw, batch) for hw in CHECK_SIZES)):
        checks.append(SizeCheck(b, h, w, _compare(session, reference, _crops(img, b, h, w), fp16)))
    return checks


def _annotate(path: Path, report: ExportReport, loaded: Any, source: Path) -> None:
    """The I/O contract and provenance in the ONNX file's metadata_props."""
    import onnx

    model = onnx.load(str(path))
    worst = max(c.max_diff for c in report.checks)
    props = {
        "mcir:io": report.contract, "mcir:architecture": report.architecture, "mcir:scale": str(report.scale),
        "mcir:source": source.name, "mcir:source_sha256": sha256_file(source), "mcir:opset": str(report.opset),
        "mcir:batch": "dynamic" if report.batch_dynamic else "fixed 1",
        "mcir:verified": (f"onnxruntime CPU vs torch fp32 on {report.image}, sizes "
                          + ", ".join(f"{c.batch}x{c.height}x{c.width}" for c in report.checks)
                          + f": max |diff| {worst:.2e} <= {report.tolerance:g}"),
        "mcir:version": __version__,
    }
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "mcir"
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _prepare(file: Path, out: Path) -> Any:
    """Checks before any work: the output is new and writable, the model loads and takes
    free sizes."""
    if out.suffix.lower() != ".onnx":
        raise McirError("the ONNX output must end in .onnx", out)
    if out.exists():
        raise McirError("exists; choose a new path (mcir never overwrites an export)", out)
    writable_target(out, "ONNX file")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise McirError('mcir export needs onnx and onnxruntime: pip install "mcir[export]"') from None
    loaded = load_checkpoint_model(file)
    if fixed_input_size(loaded.restorer):
        raise McirError(f"{loaded.architecture} takes {fixed_input_size(loaded.restorer)} x "
                        f"{fixed_input_size(loaded.restorer)} inputs only: no dynamic-size ONNX graph", file)
    return loaded


def export_onnx(file: str | Path, out: str | Path, fp16: bool = False, image: str | Path | None = None,
                opset: int = OPSET) -> ExportReport:
    """Export `file` to `out` (ONNX, dynamic batch/height/width), verified in onnxruntime
    against torch at the traced size and at CHECK_SIZES; written only if it passes."""
    file, out, start = Path(file), Path(out), time.perf_counter()
    loaded = _prepare(file, out)
    img, image_name = _sample(Path(image) if image else None, loaded.in_channels)
    reference = OnnxGraph(loaded.restorer.eval(), loaded.scale, _multiple(loaded)).eval()
    graph = OnnxGraph(loaded.restorer.eval(), loaded.scale, _multiple(loaded)).eval()
    if fp16:
        import copy

        graph = copy.deepcopy(graph).half()
    report = ExportReport(out, loaded.architecture, loaded.scale, loaded.in_channels, opset, fp16, True,
                          TOLERANCE[fp16], image_name)
    example = _crops(img, 1, *TRACE_SIZE).to(torch.float16 if fp16 else torch.float32)

    def write(tmp: Path) -> None:
        _trace(graph, tmp, example, opset, loaded.architecture)
        report.checks = _verify(tmp, reference, img, fp16, 2)
        if not _passes(report) and _passes(report, batch=1):  # the batch size was traced as a constant
            _fix_batch(tmp)
            report.batch_dynamic = False
            report.batch_note = "batch fixed at 1: the architecture turns the batch size into a constant when traced"
            report.checks = _verify(tmp, reference, img, fp16, 1)
        if not _passes(report):
            bad = next(c for c in report.checks if not c.max_diff <= report.tolerance)
            raise McirError(f"{loaded.architecture}: the exported graph differs from torch at "
                            f"{bad.batch}x{bad.height}x{bad.width} (max |diff| {bad.max_diff:.3g} > "
                            f"{report.tolerance:g}); shape-dependent code was traced as constants. Nothing written",
                            out)
        _annotate(tmp, report, loaded, file)

    atomic_write(out, write)
    report.seconds = time.perf_counter() - start
    return report


def _passes(report: ExportReport, batch: int | None = None) -> bool:
    return all(c.max_diff <= report.tolerance for c in report.checks if batch is None or c.batch == batch)
