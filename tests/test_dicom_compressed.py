"""Compressed DICOM (the `covidzoo[dicom]` extra): the grayscale compressed files pydicom ships
read as pydicom decodes them, a compressed series reads as the same series uncompressed, and
without the decoders the error says what to install.

Only files inside the installed pydicom package are used (`download=False`): nothing is fetched.
pydicom ships no grayscale JPEG Baseline or JPEG Lossless file (those it ships are colour), so
JPEG Lossless is made here from CT_small with GDCM; `JPEG-lossy.dcm` is left out because
pydicom itself cannot decode it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from data_helpers import write_series
from pydicom.data import get_testdata_file

from covidzoo.data import read_scan
from covidzoo.errors import BadInputError

# file -> its transfer syntax (checked below), all MONOCHROME2, one frame
SHIPPED = {
    "693_J2KI.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000, lossy; a CT, 14 bits signed
    "J2K_pixelrep_mismatch.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless; a CT whose
    # codestream's signedness differs from its PixelRepresentation (pydicom corrects it)
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "JPEGLSNearLossless_16.dcm": "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless, 16 bits
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",  # JPEG Extended (process 2 and 4), 12 bits
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE Lossless
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian, 8 bits
}
# The same MR slice uncompressed and losslessly compressed three ways.
LOSSLESS_OF_MR_SMALL = ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                        "MR_small_RLE.dcm"]


def _shipped(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom")
    return path


def _hu(ds):
    """What the reader should give for a one-frame file: pydicom's pixels after the rescale."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (ds.pixel_array * slope + intercept).astype(np.float32)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_compressed_file_reads_as_pydicom_decodes_it(tmp_path, name):
    source = _shipped(name)
    ds = pydicom.dcmread(source)
    assert ds.file_meta.TransferSyntaxUID == SHIPPED[name]
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    try:
        expected = _hu(ds)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        pytest.skip(f"pydicom cannot decode {name} here (decoders missing?): {exc}")
    shutil.copy(source, tmp_path / "slice.dcm")  # a one-file series
    volume = read_scan(tmp_path)
    assert volume.kind == "dicom" and volume.shape == (1, *expected.shape)
    np.testing.assert_array_equal(volume.array[0], expected)


def test_lossless_syntaxes_give_the_uncompressed_values(tmp_path):
    reference = read_scan(_shipped("MR_small.dcm")).array
    for name in LOSSLESS_OF_MR_SMALL:
        np.testing.assert_array_equal(read_scan(_shipped(name)).array, reference, err_msg=name)


def test_jpeg_lossless_made_by_gdcm(tmp_path):
    gdcm = pytest.importorskip("gdcm")
    source = _shipped("CT_small.dcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(tmp_path / "jpeg_lossless.dcm"))
    assert writer.Write()
    ds = pydicom.dcmread(tmp_path / "jpeg_lossless.dcm")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"  # JPEG Lossless SV1
    volume = read_scan(tmp_path)
    np.testing.assert_array_equal(volume.array[0], _hu(pydicom.dcmread(source)))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])
def test_compressed_series_reads_as_the_uncompressed_one(tmp_path, syntax):
    """Slices compressed one by one (RLE, JPEG 2000 Lossless) and named against their order:
    sorted by position, rescaled, the same volume as uncompressed."""
    files = write_series(tmp_path / "plain", [30, 10, 40, 20], positions=[5.0, 0.0, 7.5, 2.5],
                         size=64)  # JPEG 2000 needs 2**5 px a side for its 6 resolutions
    (tmp_path / "packed").mkdir()
    for path in files:
        ds = pydicom.dcmread(path)
        try:
            ds.compress(syntax)
        except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
            pytest.skip(f"pydicom cannot encode {syntax} here: {exc}")
        ds.save_as(tmp_path / "packed" / path.name)
    plain, packed = read_scan(tmp_path / "plain"), read_scan(tmp_path / "packed")
    assert packed.array[:, 0, 0].tolist() == [10 - 1024, 20 - 1024, 30 - 1024, 40 - 1024]
    np.testing.assert_array_equal(packed.array, plain.array)
    assert packed.spacing == plain.spacing


def test_colour_jpeg_refused(tmp_path):
    shutil.copy(_shipped("SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "rgb.dcm")
    with pytest.raises(BadInputError, match=r"rgb\.dcm: colour DICOM \(3 samples per pixel\)"):
        read_scan(tmp_path)


def test_without_decoders_says_what_to_install(tmp_path, monkeypatch):
    pixels = pytest.importorskip("pydicom.pixels")
    if not hasattr(pixels, "get_decoder"):
        pytest.skip("pydicom < 3 has no decoder registry to empty")
    decoder = pixels.get_decoder(pydicom.uid.JPEG2000)
    monkeypatch.setattr(decoder, "_available", {})  # as if no decoder package were installed
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg",)})
    path = tmp_path / "j2k.dcm"
    shutil.copy(_shipped("693_J2KI.dcm"), path)
    with pytest.raises(BadInputError) as info:
        read_scan(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode JPEG 2000 Image Compression pixel data")
    assert "pip install 'covidzoo[dicom]'" in message and "\n" not in message
