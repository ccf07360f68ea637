"""The memory a scoring job will take, estimated from the two volume headers alone.

This is the one place that knows what :func:`monai_jdt.scoring.score_files` allocates, so
that the scoring pool can admit a job by its memory before any of it is allocated:

* **streamed label maps** (integer, unscaled, no channel axis, on the CPU): two inflate
  threads hand chunks of ``STREAM_CHUNK_VOXELS`` voxels through queues of depth ``D`` to the
  counting thread, so at most ``2 (D + 2)`` chunks of each stored dtype are alive, whatever
  the volume size;
* **volumes loaded whole** (floats, scaled integers, probability maps, a CUDA device): each
  volume is read into one array of its stored dtype (``N b`` bytes for ``N`` voxels of ``b``
  bytes); scaling (``scl_slope`` / ``scl_inter``) makes a working float array and one
  temporary (``2 x 8 N``, counted in float64 so the estimate holds whichever float width the
  core uses); float16 is widened to float32 (``4 N``); a float volume read as labels is cast
  to an integer map after its rounded copy (``2 x 8 N``); an NRRD / MetaImage volume is
  decoded by SimpleITK and copied into numpy, so its stored dtype counts twice (``2 N b``).

On top come a constant for the chunk temporaries (the confusion codes, the soft-count
chunks of one map in float64), the label cells of volumes that may hold ids of 256 and more
(:func:`label_cells_bytes`), the soft-count chunks of every channel of a probability map
(:func:`channel_bytes`), and the boundary metrics' surface points, bounded per voxel
(:func:`boundary_bytes`). The estimate is an upper bound of what the core allocates on the host
(checked in the tests with ``tracemalloc``), not a measurement: it errs on the large side.

The refusals of one case by the service's limits (``JDT_MAX_JOB_BYTES``,
``JDT_MAX_BOUNDARY_VOXELS``) are worded here too, once for ``POST /v1/scores`` (413) and for
the cases of an evaluation job (a failed case with the same code).
"""

from __future__ import annotations

import math

from monai_jdt.scoring import ScoringOptions
from monai_jdt.scoring.boundary_report import wants_boundary
from monai_jdt.scoring.files import _QUEUE_DEPTH, STREAM_CHUNK_VOXELS, streamable
from monai_jdt.scoring.options import BOUNDARY_METRICS
from monai_jdt.scoring.sitk_formats import ImageInfo, VolumeInfo

__all__ = [
    "CHUNK_OVERHEAD_BYTES",
    "LABEL_CELLS_BYTES",
    "boundary_bytes",
    "boundary_refusal",
    "channel_bytes",
    "job_bytes",
    "job_bytes_refusal",
    "label_cells_bytes",
    "volume_bytes",
]

#: chunk temporaries of the counting loops (confusion codes, soft counts in float64)
CHUNK_OVERHEAD_BYTES = 64 * 1024 * 1024
#: the label cells of ids of 256 and more (``monai_jdt.scoring.confusion``): at most
#: ``MAX_LABEL_PAIRS`` distinct cells kept, one chunk's more, and their summation (measured
#: with the chunk temporaries: 209 MiB for a 128³ pair of noise over 4096 ids, refused at the
#: pair limit; 190 MiB for a 192³ one of 10^6 pairs; 55-75 MiB for a map of 4000 instances)
LABEL_CELLS_BYTES = 192 * 1024 * 1024
_WORK_FLOAT = 8  # bytes of the float a scaled volume is converted to (float64 at most)
#: bytes per spatial voxel of the boundary metrics, bounds of what a structure that is nearly
#: all surface takes (measured on a 256³ cube with half its voxels set at random: 34 bytes for
#: the voxel surface, 84 for surfels, 25 more with Boundary IoU)
_BOUNDARY_VOXEL = 48
_BOUNDARY_SURFEL = 112
_BOUNDARY_IOU = 40
_SOFT_COPIES = 8


def volume_bytes(info: VolumeInfo) -> int:
    """Host bytes of one volume loaded whole: stored array, scaling, widening, label cast."""
    n = info.voxels
    total = n * info.dtype.itemsize
    if isinstance(info, ImageInfo):
        total *= 2  # SimpleITK's image and the numpy copy are both alive for a moment
    if info.scaled:
        total += 2 * _WORK_FLOAT * n
    elif info.dtype.kind == "f" and info.dtype.itemsize < 4:
        total += 4 * n
    if info.scaled or info.dtype.kind == "f":
        # a float volume read as labels: its rounded copy, then the integer map
        total += 2 * 8 * n
    return total


def boundary_bytes(reference: VolumeInfo, options: ScoringOptions) -> int:
    """Host bytes of the boundary metrics on top of the volumes: per surface point, its
    coordinates, distances and the lattice search's gathers, bounded per voxel (a rough
    structure is nearly all surface): ``_BOUNDARY_VOXEL`` bytes for the voxel surface,
    ``_BOUNDARY_SURFEL`` for surfels (area weights and cell corners too), plus
    ``_BOUNDARY_IOU`` for Boundary IoU's distance transforms of both masks, and 16 for the
    copies of both maps without the voxels of ``ignore_label``."""
    if not wants_boundary(options):
        return 0
    spatial = math.prod(reference.spatial_shape)
    per_voxel = _BOUNDARY_SURFEL if options.surface == "surfel" else _BOUNDARY_VOXEL
    if "boundary_iou" in options.metrics:
        per_voxel += _BOUNDARY_IOU
    if options.ignore_label is not None:  # both maps without the ignored voxels: copies
        per_voxel += 16
    return spatial * per_voxel


def label_cells_bytes(prediction: VolumeInfo, reference: VolumeInfo) -> int:
    """``LABEL_CELLS_BYTES`` unless both volumes store unscaled one-byte integers, whose ids
    (below 256) are counted in fixed histograms; any other dtype may hold larger ids."""
    small = all(
        v.dtype.kind in "biu" and v.dtype.itemsize == 1 and not v.scaled
        for v in (prediction, reference)
    )
    return 0 if small else LABEL_CELLS_BYTES


def channel_bytes(prediction: VolumeInfo) -> int:
    """Host bytes of the soft counts' chunks of a probability map with ``C`` channels:
    ``_SOFT_COPIES`` float64 ``[C, SOFT_CHUNK_VOXELS]`` arrays (the channels taken, widened
    and clipped, for the prediction and a soft reference, and the counts' temporaries); 0
    without a channel axis."""
    channels = prediction.voxels // max(1, math.prod(prediction.spatial_shape))
    if channels <= 1:  # one map: its chunks fit CHUNK_OVERHEAD_BYTES
        return 0
    from monai_jdt.scoring.soft import SOFT_CHUNK_VOXELS  # imports torch: the soft path only

    return _SOFT_COPIES * 8 * SOFT_CHUNK_VOXELS * channels


def job_bytes(prediction: VolumeInfo, reference: VolumeInfo, options: ScoringOptions) -> int:
    """Upper bound of the host memory of ``score_files(prediction, reference, options)``."""
    if streamable(prediction, reference, options):
        in_flight = 2 * (_QUEUE_DEPTH + 2) * STREAM_CHUNK_VOXELS
        stored = in_flight * max(prediction.dtype.itemsize, reference.dtype.itemsize)
        return stored + CHUNK_OVERHEAD_BYTES + label_cells_bytes(prediction, reference)
    loaded = volume_bytes(prediction) + volume_bytes(reference) + CHUNK_OVERHEAD_BYTES
    loaded += label_cells_bytes(prediction, reference)
    return loaded + boundary_bytes(reference, options) + channel_bytes(prediction)


def job_bytes_refusal(memory_bytes: int, limit: int) -> str | None:
    """Why a case whose estimate is ``memory_bytes`` is refused (code ``job_too_large``), or
    None when it fits ``limit``."""
    if memory_bytes <= limit:
        return None
    return (
        f"scoring these volumes needs about {memory_bytes / 2**20:.0f} MiB, more than "
        f"the limit of {limit / 2**20:.0f} MiB per job"
    )


def boundary_refusal(
    prediction: VolumeInfo, reference: VolumeInfo, options: ScoringOptions, limit: int
) -> str | None:
    """Why a case is refused boundary metrics (code ``boundary_too_large``): they are asked
    for and a volume has more than ``limit`` voxels; None otherwise."""
    voxels = max(prediction.voxels, reference.voxels)
    if not wants_boundary(options) or voxels <= limit:
        return None
    return (
        f"boundary metrics ({', '.join(m for m in options.metrics if m in BOUNDARY_METRICS)})"
        f" are limited to volumes of {limit} voxels on this server; these "
        f"have {voxels}: ask for overlap metrics only, or score them with the command line"
    )
