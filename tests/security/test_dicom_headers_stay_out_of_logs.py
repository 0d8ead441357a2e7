"""Threat: a DICOM header value (patient data) written to the server log or the CLI's stderr.

pydicom's "Unknown encoding '<SpecificCharacterSet>'" warning put that header value in
the log, 6+ lines per request. Only modality, body part and photometric interpretation
may ever be shown or logged; pydicom's records are now rephrased while decoding.
"""
from __future__ import annotations

import logging
import warnings

import pytest

from dpt_core.imageio import _PydicomRedactor, frame_pixels, load_image

SECRET = "DOE_JANE_1970"


@pytest.fixture
def crafted_dicom(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = SECRET
    ds.InstitutionName = SECRET
    ds.SpecificCharacterSet = SECRET  # an unknown encoding: pydicom warns when reading, quoting it
    path = tmp_path / "study.dcm"
    with warnings.catch_warnings():  # writing it warns too: that is this test's doing, not the app's
        warnings.simplefilter("ignore")
        logging.getLogger("pydicom").disabled = True
        try:
            ds.save_as(path)
        finally:
            logging.getLogger("pydicom").disabled = False
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_without_the_redactor_pydicom_logs_the_value(crafted_dicom, caplog, monkeypatch):
    # Why the redactor exists (and proof that this file does make pydicom complain).
    import dpt_core.imageio as imageio

    monkeypatch.setattr(imageio, "_redact_pydicom_messages", lambda: None)
    pydicom_log = logging.getLogger("pydicom")
    monkeypatch.setattr(pydicom_log, "filters", [f for f in pydicom_log.filters if not isinstance(f, _PydicomRedactor)])
    caplog.set_level(logging.DEBUG)
    load_image(crafted_dicom)
    assert SECRET in caplog.text


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING])
def test_decoding_logs_no_header_value(crafted_dicom, caplog, level):
    caplog.set_level(level)
    caplog.set_level(level, logger="pydicom")  # even with pydicom's own logger opened up
    loaded = load_image(crafted_dicom)
    assert frame_pixels(crafted_dicom) == loaded.image.width * loaded.image.height
    assert set(loaded.meta) <= {"modality", "body_part", "photometric"}
    assert SECRET not in caplog.text
    pydicom_records = [r for r in caplog.records if r.name.startswith("pydicom")]
    assert all(r.getMessage() == _PydicomRedactor.TEXT for r in pydicom_records)
    assert bool(pydicom_records) == (level == logging.DEBUG)  # rephrased, and only at debug level


def test_cli_stderr_has_no_header_value(crafted_dicom, capsys):
    from dpt_core.cli import main

    code = main(["predict", str(crafted_dicom), "--backbone", "tiny", "--preset", "btmri"])
    out, err = capsys.readouterr()
    assert code == 0
    assert SECRET not in err and SECRET not in out


def test_python_warnings_from_pydicom_are_not_shown(crafted_dicom, recwarn):
    load_image(crafted_dicom)
    assert not [w for w in recwarn.list if SECRET in str(w.message)]
