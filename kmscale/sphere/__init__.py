"""HEALPix sphere layer: nested grids, face images with neighbour padding, regridding,
regional HEALPix and CF-style stores (see ARCHITECTURE.md, "Sphere")."""

from kmscale.sphere.faces import (
    FaceConv2d,
    FacePad,
    FaceUpsample,
    face_permutation,
    from_faces,
    pad_faces,
    padding_tables,
    to_faces,
)
from kmscale.sphere.healpix import (
    HealpixGrid,
    check_nside,
    coarsen,
    nside_from_npix,
    refine,
    upsample,
)
from kmscale.sphere.regional import RegionalHealpix
from kmscale.sphere.regrid import (
    healpix_to_latlon,
    latlon_to_healpix,
    regrid_to_healpix,
    regrid_to_latlon,
)
from kmscale.sphere.store import check_healpix_dataset, open_healpix_store, write_healpix_store

__all__ = [
    "FaceConv2d",
    "FacePad",
    "FaceUpsample",
    "HealpixGrid",
    "RegionalHealpix",
    "check_healpix_dataset",
    "check_nside",
    "coarsen",
    "face_permutation",
    "from_faces",
    "healpix_to_latlon",
    "latlon_to_healpix",
    "nside_from_npix",
    "open_healpix_store",
    "pad_faces",
    "padding_tables",
    "refine",
    "regrid_to_healpix",
    "regrid_to_latlon",
    "to_faces",
    "upsample",
    "write_healpix_store",
]
