"""NIfTI, MHA and NRRD round trips keep shape, values and affine; writes are atomic."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medp2p.io import VolumeReadError, axis_codes, nifti, read_volume, write_nifti, write_volume
from medp2p.io.layout import c_order
from medp2p.types import Volume


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, cy, cz, sx, sy, sz = np.cos(ax), np.cos(ay), np.cos(az), np.sin(ax), np.sin(ay), np.sin(az)
    return (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )


def _affine(direction: np.ndarray, spacing=(0.8, 0.9, 2.5), origin=(-31.25, 17.5, 102.125)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = direction * np.asarray(spacing)[None, :]
    aff[:3, 3] = origin
    return aff


AFFINES = {
    "RAS": _affine(np.eye(3)),
    "LAS": _affine(np.diag([-1.0, 1.0, 1.0])),
    "LPS": _affine(np.diag([-1.0, -1.0, 1.0])),
    "oblique": _affine(_rotation(0.3, -0.2, 0.7)),
    "oblique_left_handed": _affine(_rotation(-0.1, 0.25, -0.4) @ np.diag([1.0, -1.0, 1.0])),
}


@pytest.fixture
def volume(rng: np.random.Generator) -> Volume:
    return Volume(rng.normal(0, 300, (7, 6, 5)).astype(np.float32), AFFINES["RAS"])


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_round_trip_keeps_affine_and_values(tmp_path: Path, volume: Volume, name: str, suffix: str) -> None:
    vol = Volume(volume.array, AFFINES[name])
    first = tmp_path / f"a{suffix}"
    write_volume(vol, first)
    back = read_volume(first)
    assert back.array.dtype == np.float32
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    assert axis_codes(back.affine) == axis_codes(vol.affine)
    # read -> write -> read again, through the metadata the reader kept
    second = tmp_path / f"b{suffix}"
    write_volume(back, second)
    again = read_volume(second)
    np.testing.assert_array_equal(again.array, vol.array)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-4)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_nifti_header_qform_equals_sform_and_no_scaling(tmp_path: Path, volume: Volume, name: str) -> None:
    path = write_nifti(Volume(volume.array, AFFINES[name]), tmp_path / "x.nii.gz")
    img = nib.load(path)
    qform, qcode = img.header.get_qform(coded=True)
    sform, scode = img.header.get_sform(coded=True)
    assert qcode > 0 and scode > 0
    np.testing.assert_allclose(qform, sform, atol=1e-4)
    np.testing.assert_allclose(sform, AFFINES[name], atol=1e-4)
    assert img.get_data_dtype() == np.float32
    assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0


def test_same_volume_in_every_format_reads_the_same(tmp_path: Path, volume: Volume) -> None:
    vol = Volume(volume.array, AFFINES["oblique"])
    reads = [read_volume(write_volume(vol, tmp_path / f"v{s}")) for s in (".nii.gz", ".mha", ".nrrd")]
    for other in reads[1:]:
        np.testing.assert_array_equal(other.array, reads[0].array)
        np.testing.assert_allclose(other.affine, reads[0].affine, atol=1e-4)


def test_integer_labels_keep_slope_one(tmp_path: Path) -> None:
    labels = np.zeros((5, 5, 3), np.float32)
    labels[1:3, 2:4, 1] = 2
    path = write_nifti(Volume(labels, np.eye(4)), tmp_path / "seg.nii.gz", dtype=np.uint8)
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8
    assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels.astype(np.uint8))


def test_integer_output_refuses_fractions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-integer"):
        write_nifti(Volume(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), tmp_path / "m.nii.gz", dtype=np.uint8)
    assert not list(tmp_path.iterdir())


def test_source_header_fields_survive(tmp_path: Path, volume: Volume) -> None:
    img = nib.Nifti1Image(volume.array, AFFINES["LAS"])
    img.header["descrip"] = b"scanner X protocol Y"
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(AFFINES["LAS"], code=1)
    img.set_sform(AFFINES["LAS"], code=2)
    nib.save(img, tmp_path / "src.nii.gz")
    src = read_volume(tmp_path / "src.nii.gz")
    out = write_nifti(src.with_array(src.array * 2), tmp_path / "out.nii.gz")
    hdr = nib.load(out).header
    assert hdr["descrip"].tobytes().rstrip(b"\0") == b"scanner X protocol Y"
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 2
    assert hdr.get_xyzt_units() == ("mm", "sec")


def test_scaled_integer_nifti_reads_in_float(tmp_path: Path) -> None:
    raw = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "ct.nii.gz").array, raw * 2.0 - 1024.0)


def test_singleton_4d_and_2d_become_3d(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((4, 3, 2, 1), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 3), np.float32), np.eye(4)), tmp_path / "b.nii.gz")
    assert read_volume(tmp_path / "a.nii.gz").shape == (4, 3, 2)
    assert read_volume(tmp_path / "b.nii.gz").shape == (4, 3, 1)
    nib.save(nib.Nifti1Image(np.ones((4, 3, 2, 3), np.float32), np.eye(4)), tmp_path / "c.nii.gz")
    with pytest.raises(VolumeReadError, match=r"c\.nii\.gz.*not a 3D volume"):
        read_volume(tmp_path / "c.nii.gz")


def test_truncated_file_names_the_file(tmp_path: Path, volume: Volume) -> None:
    path = write_nifti(volume, tmp_path / "ct.nii.gz")
    data = gzip.decompress(path.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(data[: len(data) - 100]))
    (tmp_path / "cut_gz.nii.gz").write_bytes(path.read_bytes()[:-40])
    for name in ("cut.nii.gz", "cut_gz.nii.gz"):
        with pytest.raises(VolumeReadError, match=name):
            read_volume(tmp_path / name)


def test_unknown_and_missing_inputs(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match=r"notes\.txt.*unknown volume format"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(VolumeReadError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_failed_write_keeps_older_file_and_leaves_nothing(tmp_path: Path, volume: Volume, monkeypatch, suffix: str) -> None:
    path = write_nifti(volume, tmp_path / f"sct{suffix}")
    before = path.read_bytes()
    save = nib.Nifti1Image.to_file_map

    def broken_save(img, *args, **kwargs):  # writes the whole image, then the disk fills up
        save(img, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(volume.with_array(volume.array + 1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sct{suffix}"]


def test_gzipped_nifti_is_nibabels_file_in_one_plain_gzip_member(tmp_path: Path, volume: Volume) -> None:
    import zlib

    gz = write_nifti(volume, tmp_path / "x.nii.gz").read_bytes()
    plain = write_nifti(volume, tmp_path / "x.nii").read_bytes()
    one = zlib.decompressobj(wbits=31)  # one gzip member, nothing after it
    assert one.decompress(gz) == plain and one.eof and one.unused_data == b""
    assert gz[3] == 0 and gz[4:8] == b"\0\0\0\0"  # no file name, mtime 0: the same volume gives the same bytes
    assert write_nifti(volume, tmp_path / "y.nii.gz").read_bytes() == gz
    assert len(gz) < len(plain)


def test_written_files_get_ordinary_permissions(tmp_path: Path, volume: Volume) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = write_nifti(volume, tmp_path / "x.nii.gz")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_sheared_affine_is_refused_on_write(tmp_path: Path, volume: Volume) -> None:
    aff = np.eye(4)
    aff[0, 1] = 0.3
    with pytest.raises(ValueError, match="sheared"):
        write_nifti(Volume(volume.array, aff), tmp_path / "x.nii.gz")


def _nibabel_reads(path: Path) -> tuple[np.ndarray, bytes, np.ndarray]:
    img = nib.load(str(path), mmap=False)
    return np.ascontiguousarray(img.get_fdata(dtype=np.float32)), img.header.binaryblock, img.affine


@pytest.mark.parametrize(
    ("image_cls", "dtype", "slope_inter"),
    [
        (nib.Nifti1Image, np.int16, (2.0, -1024.0)),
        (nib.Nifti1Image, np.float32, (None, None)),
        (nib.Nifti1Image, np.uint8, (None, None)),
        (nib.Nifti2Image, np.float64, (None, None)),
        (nib.Nifti2Image, np.int16, (0.5, 3.0)),
    ],
)
def test_gzipped_nifti_inflated_by_isal_reads_as_nibabel_does(
    tmp_path: Path, rng: np.random.Generator, image_cls: type, dtype: type, slope_inter: tuple
) -> None:
    raw = (rng.random((19, 13, 11)) * 200).astype(dtype)
    img = image_cls(raw, AFFINES["oblique"])
    if slope_inter[0] is not None:
        img.header.set_slope_inter(*slope_inter)
    path = tmp_path / "vol.nii.gz"
    nib.save(img, path)
    array, header, affine = _nibabel_reads(path)
    read = nifti._read_gzipped(path)
    assert read is not None, "the ISA-L path fell back to nibabel on a well-formed file"
    assert type(read[0]) is image_cls and read[0].header.binaryblock == header
    vol = read_volume(path)
    assert vol.array.flags.c_contiguous and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, array)
    np.testing.assert_array_equal(vol.affine, affine)


def test_a_broken_gzip_falls_back_to_nibabel_and_its_error(tmp_path: Path, volume: Volume) -> None:
    path = write_nifti(volume, tmp_path / "ct.nii.gz")
    (tmp_path / "cut_gz.nii.gz").write_bytes(path.read_bytes()[:-40])
    (tmp_path / "garbage.nii.gz").write_bytes(b"not a gzip stream at all")
    for name, problem in (("cut_gz.nii.gz", "truncated or corrupt"), ("garbage.nii.gz", "not a readable NIfTI")):
        assert nifti._read_gzipped(tmp_path / name) is None
        with pytest.raises(VolumeReadError, match=f"{name}.*{problem}"):
            read_volume(tmp_path / name)


@pytest.mark.parametrize("shape", [(7, 6, 5), (33, 17, 9), (4, 3, 16), (5, 4), (6, 5, 4, 3)])
def test_c_order_copies_fortran_volumes_to_the_bit(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    a = np.asfortranarray(rng.normal(size=shape).astype(np.float32))
    out = c_order(a)
    assert out.flags.c_contiguous and out.dtype == a.dtype and out.shape == a.shape
    np.testing.assert_array_equal(out, a)
    c = np.ascontiguousarray(a)
    assert c_order(c) is c  # already C order: no copy
    view = c[:, ::2]  # neither order: numpy's copy
    np.testing.assert_array_equal(c_order(view), view)
