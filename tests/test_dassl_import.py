"""dpt_core.dassl_import: read Dassl prompt context from .pth.tar files without executing pickles."""
from __future__ import annotations

import builtins
import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from dpt_core.dassl_import import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    list_tensors,
    read_dassl_context,
)


def _write_marker(path: str) -> str:
    """What a malicious checkpoint would run on unpickling; must never be called by the reader."""
    Path(path).write_text("executed")
    return "pwned"


class _MarkerPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


class _EvalPayload:
    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('eval')"

    def __reduce__(self):
        return (builtins.eval, (self.code,))


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.cmd = f"touch {str(marker)!r}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _CustomMapping(dict):
    """A non-allowlisted class standing where the state_dict should be."""


def _dassl_checkpoint(tmp_path: Path, state_dict: dict, scheduler: object = None, name: str = "model.pth.tar-100") -> Path:
    """Save exactly what Dassl's save_checkpoint writes, with a real optimizer state."""
    p = torch.nn.Parameter(torch.randn(4, 8))
    opt = torch.optim.SGD([p], lr=0.002, momentum=0.9)
    p.grad = torch.ones_like(p)
    opt.step()  # so the optimizer state holds a momentum tensor
    if scheduler is None:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100).state_dict()
    path = tmp_path / name
    torch.save({"state_dict": state_dict, "epoch": 100, "optimizer": opt.state_dict(), "scheduler": scheduler}, path)
    return path


def _coop_state(ctx: torch.Tensor) -> OrderedDict:
    return OrderedDict([
        ("prompt_learner.ctx", ctx),
        ("prompt_learner.token_prefix", torch.randn(3, 1, 768)),
        ("prompt_learner.token_suffix", torch.randn(3, 72, 768)),
        ("image_encoder.proj.weight", torch.randn(16, 8)),
    ])


def test_malicious_dassl_checkpoint_reads_ctx_and_runs_nothing(tmp_path, caplog):
    marker = tmp_path / "marker"
    # Control: the payload is live, i.e. plain pickle WOULD run it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_MarkerPayload(control)))
    assert control.exists()

    ctx = torch.randn(4, 768)
    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)  # the object itself, not its state
    scheduler = {"payload": _MarkerPayload(marker), "sched": sched}
    path = _dassl_checkpoint(tmp_path, _coop_state(ctx), scheduler=scheduler)

    with caplog.at_level(logging.WARNING, logger="dpt_core.dassl_import"):
        out = read_dassl_context(path)
    assert torch.equal(out, ctx)
    assert out.dtype == torch.float32 and out.is_contiguous() and out.device.type == "cpu"
    assert not marker.exists()
    assert "CosineAnnealingLR" in caplog.text and "_write_marker" in caplog.text


def test_eval_and_system_payloads_in_state_dict_are_inert(tmp_path):
    m1, m2 = tmp_path / "eval_marker", tmp_path / "system_marker"
    ctx = torch.randn(4, 768)
    sd = _coop_state(ctx)
    sd["evil_eval"] = _EvalPayload(m1)
    sd["evil_system"] = _SystemPayload(m2)
    path = _dassl_checkpoint(tmp_path, sd)
    assert torch.equal(read_dassl_context(path), ctx)
    assert "evil_eval" not in list_tensors(path)  # opaque objects are not tensors
    assert not m1.exists() and not m2.exists()
    # Asking for the payload by name is refused, not executed.
    with pytest.raises(UnsafeCheckpointError, match=r"(__builtin__|builtins)\.eval"):
        read_dassl_context(path, key="evil_eval")
    assert not m1.exists()


def test_biomedcoop_top_level_ctx(tmp_path):
    ctx = torch.randn(4, 768)
    sd = OrderedDict([("ctx", ctx), ("token_prefix", torch.randn(5, 1, 768)), ("token_suffix", torch.randn(5, 72, 768))])
    assert torch.equal(read_dassl_context(_dassl_checkpoint(tmp_path, sd)), ctx)


@pytest.mark.parametrize("key", ["module.prompt_learner.ctx", "model.prompt_learner.ctx"])
def test_other_ctx_key_layouts(tmp_path, key):
    ctx = torch.randn(8, 768)
    path = _dassl_checkpoint(tmp_path, OrderedDict([("token_prefix", torch.randn(2, 1, 768)), (key, ctx)]))
    assert torch.equal(read_dassl_context(path), ctx)


def test_explicit_key(tmp_path):
    a, b = torch.randn(4, 768), torch.randn(2, 768)
    path = _dassl_checkpoint(tmp_path, OrderedDict([("prompt_learner.ctx", a), ("other", b)]))
    assert torch.equal(read_dassl_context(path, key="other"), b)
    with pytest.raises(CheckpointFormatError, match="'nope'.*prompt_learner.ctx"):
        read_dassl_context(path, key="nope")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_converted_to_float32(tmp_path, dtype):
    ctx = torch.randn(4, 768).to(dtype)
    out = read_dassl_context(_dassl_checkpoint(tmp_path, _coop_state(ctx)))
    assert out.dtype == torch.float32
    assert torch.equal(out, ctx.float())


def test_parameter_view_and_non_contiguous_ctx(tmp_path):
    big = torch.randn(10, 768)
    view = big[2:6]  # saved as the whole storage plus an offset
    t = torch.randn(768, 3).t()  # non-contiguous strides
    sd = OrderedDict([("prompt_learner.ctx", torch.nn.Parameter(view.clone())), ("v", view), ("t", t), ("big", big)])
    path = _dassl_checkpoint(tmp_path, sd)
    assert torch.equal(read_dassl_context(path), view)
    assert torch.equal(read_dassl_context(path, key="v"), view)
    out = read_dassl_context(path, key="t")
    assert torch.equal(out, t) and out.is_contiguous()


def test_big_endian_archive(tmp_path):
    ctx = torch.randn(4, 768)
    src = _dassl_checkpoint(tmp_path, _coop_state(ctx))
    dst = tmp_path / "big_endian.pth.tar"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith(".pkl"):
                # every storage in this checkpoint is float32: swap each 4-byte word
                data = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, 4).flip(-1).numpy().tobytes()
            zout.writestr(info, data)
    assert torch.equal(read_dassl_context(dst), ctx)


def test_list_tensors(tmp_path):
    shapes = list_tensors(_dassl_checkpoint(tmp_path, _coop_state(torch.randn(4, 768))))
    assert shapes == {
        "prompt_learner.ctx": (4, 768),
        "prompt_learner.token_prefix": (3, 1, 768),
        "prompt_learner.token_suffix": (3, 72, 768),
        "image_encoder.proj.weight": (16, 8),
    }


def test_missing_ctx_lists_keys(tmp_path):
    sd = OrderedDict((f"layer{i}.weight", torch.zeros(2)) for i in range(25))
    with pytest.raises(CheckpointFormatError, match=r"no prompt context.*layer0\.weight.*layer19\.weight \(\+5 more\)") as ei:
        read_dassl_context(_dassl_checkpoint(tmp_path, sd))
    assert "layer20.weight" not in str(ei.value)


@pytest.mark.parametrize("shape, what", [((10, 4, 768), "class-specific"), ((1, 4, 768), "batched"), ((768,), "expected")])
def test_wrong_rank_is_refused(tmp_path, shape, what):
    path = _dassl_checkpoint(tmp_path, OrderedDict(ctx=torch.randn(*shape)))
    with pytest.raises(CheckpointFormatError, match=what):
        read_dassl_context(path)


def test_integer_ctx_is_refused(tmp_path):
    with pytest.raises(CheckpointFormatError, match="floating-point"):
        read_dassl_context(_dassl_checkpoint(tmp_path, OrderedDict(ctx=torch.zeros(4, 768, dtype=torch.long))))


def test_garbage_file(tmp_path):
    path = tmp_path / "model.pth.tar-1"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointFormatError, match="not a PyTorch zip checkpoint"):
        read_dassl_context(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "model.pth.tar-1"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3")
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        read_dassl_context(path)


def test_legacy_format_is_refused(tmp_path):
    path = tmp_path / "legacy.pth.tar"
    torch.save({"state_dict": OrderedDict(ctx=torch.randn(4, 768))}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match="legacy"):
        read_dassl_context(path)


def test_opaque_state_dict_is_unsafe(tmp_path):
    path = _dassl_checkpoint(tmp_path, _CustomMapping(ctx=torch.randn(4, 768)))
    with pytest.raises(UnsafeCheckpointError, match="_CustomMapping"):
        read_dassl_context(path)


def test_module_never_calls_torch_load():
    import dpt_core.dassl_import as mod

    src = Path(mod.__file__).read_text()
    assert not re.search(r"torch\.load\s*\(|weights_only|torch\.serialization", src)


def _handmade_archive(tmp_path: Path, pkl: bytes, storage: torch.Tensor) -> Path:
    path = tmp_path / "handmade.pth.tar"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", storage.numpy().tobytes())
        zf.writestr("archive/version", "3\n")
    return path


_TENSOR_0 = (  # protocol-0 text for _rebuild_tensor_v2(storage "0" of 6 floats, 0, (2, 3), (3, 1), False, OrderedDict())
    "ctorch._utils\n_rebuild_tensor_v2\n((S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI6\ntQI0\n"
    "(I2\nI3\nt(I3\nI1\ntI00\nccollections\nOrderedDict\n)Rt"
)


def test_handcrafted_protocol0_reduce_inst_and_newobj_payloads(tmp_path):
    marker = tmp_path / "m"
    cmd = f"S'touch {marker}'\n"
    pkl = (
        "(dS'state_dict'\n(d"
        f"S'reduce'\ncos\nsystem\n({cmd}tR"  # REDUCE os.system(...)
        f"sS'inst'\n({cmd}ios\nsystem\n"  # INST os.system(...)
        f"sS'newobj'\ncsubprocess\nPopen\n({cmd}t\x81"  # NEWOBJ subprocess.Popen(...)
        f"sS'build'\ncbuiltins\nobject\n)R(S'x'\n{cmd}db"  # BUILD with state
        f"sS'ctx'\n{_TENSOR_0}Rss."
    ).encode("latin-1")  # latin-1 keeps the NEWOBJ opcode a single \x81 byte
    storage = torch.arange(6, dtype=torch.float32)
    path = _handmade_archive(tmp_path, pkl, storage)
    assert torch.equal(read_dassl_context(path), storage.view(2, 3))
    assert list(list_tensors(path)) == ["ctx"]
    assert not marker.exists()


def test_handcrafted_build_on_allowlisted_function_is_refused(tmp_path):
    # BUILD targeting our rebuild stand-in must not be able to rewire it.
    pkl = ("(dS'state_dict'\n(dS'ctx'\n" + _TENSOR_0 + "R"
           "sS'x'\nctorch._utils\n_rebuild_tensor_v2\n(S'_fn'\nS'oops'\ndbss.").encode()
    path = _handmade_archive(tmp_path, pkl, torch.zeros(6))
    with pytest.raises(CheckpointFormatError, match="cannot parse data.pkl.*unexpected state"):
        read_dassl_context(path)
