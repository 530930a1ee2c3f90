"""The built-in scan readers (classes in `covidzoo.data.readers`, imported on first use).

`covidzoo.data.readers` asks them in a fixed order: the built-ins that claim by what a path is
(`array`, `itk`, `nifti`, `slices`), then third-party readers, then the `fallback` one (`dicom`).
"""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_readers(register: Any) -> None:
    register(
        "array",
        "covidzoo.data.readers:ArrayReader",
        summary="Numpy arrays (.npy, .npz): D x H x W in HU, or uint8 already windowed",
    )
    register(
        "nifti",
        "covidzoo.data.readers:NiftiReader",
        summary="NIfTI files (.nii, .nii.gz), reoriented to the DICOM axis order",
    )
    register(
        "itk",
        "covidzoo.data.readers:ItkReader",
        summary="MetaImage and NRRD files (.mha, .mhd, .nrrd, .nhdr) through SimpleITK "
        "(covidzoo[itk]), reoriented to the DICOM axis order",
    )
    register(
        "slices",
        "covidzoo.data.readers:SliceFolderReader",
        summary="A folder of 8-bit slice images (0.jpg, 1.jpg, ...: COV19-CT-DB)",
    )
    register(
        "dicom",
        "covidzoo.data.readers:DicomReader",
        summary="A DICOM series folder or file (any file or folder no other reader claims)",
        fallback=True,
    )
