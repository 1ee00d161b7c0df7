"""The offline runner: the ROS-free tracker (or an OpenCV baseline) over datasets and recorded bags,
without DDS, one result file pair per sequence.

* :class:`FrameSource`: one sequence to track (name, first box, frames as the tracker wants them,
  ground truth); :func:`dataset_sources` and :func:`bag_source` make them from a dataset on disk or a
  converted/recorded bag (:func:`align_to_frames` puts a bag's per-pair results back on its
  ground-truth frames);
* running: :func:`run_sources` tracks every source with a tracker from a factory
  (:func:`make_tracker_factory`, :func:`make_baseline_factory`) and writes its results once complete;
* resuming: a sequence with finished results is skipped, and a results folder keeps the settings it was
  made with (:func:`run_manifest`, :func:`check_run_manifest`), so that a folder of other settings is
  never resumed as if it were this run's.

Used by ``ckd-eval run`` (:mod:`ckd_ros.cli.eval`), ``make demo`` (:mod:`ckd_ros.ros.demo`) and the tests.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ckd_ros.core import bagio, baselines, datasets, report, results


class RunRefused(ValueError):
    """A results folder this run must not add to or resume (made with other settings); the message says
    what to do."""


# --------------------------------------------------------------------------------------------
# Frame sources

@dataclass
class FrameSource:
    """One sequence to track: a name, its first box, frames as the tracker wants them, and GT."""

    name: str
    init_box: np.ndarray
    frames: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
    length: int | None
    ground_truth: datasets.GroundTruth | None = None
    # Bags: the stamps of the ground-truth frames (one result row each) and, filled while frames() runs,
    # the stamp of every pair it yields. A frame the bag has no pair for (a dropped image) keeps the
    # previous box, as a consumer of the tracker's output would see it, so rows stay aligned with the
    # ground truth.
    frame_stamps: np.ndarray | None = None
    pair_stamps: list = field(default_factory=list)


def tracker_thermal(thermal: np.ndarray, encoding: str | None, gain) -> np.ndarray:
    """Thermal frame in the tracker's input format (uint8 H x W or H x W x 3): 8-bit passes through,
    16-bit/float goes through the core's gain control."""
    from ckd_ros.core.image import thermal_image_to_rgb8
    if encoding is None:   # a dataset file: mono (any depth) or colour
        if thermal.dtype == np.uint8:
            return thermal
        encoding = 'mono16' if thermal.dtype == np.uint16 else '32FC1'
        thermal = thermal.astype(np.float32) if encoding == '32FC1' else thermal
    return thermal_image_to_rgb8(thermal, encoding, gain).image


def dataset_sources(dataset: datasets.Dataset, names: Iterable[str] | None, gain,
                    max_frames: int | None) -> Iterator[FrameSource]:
    for name in (list(names) if names is not None else dataset.names):
        try:
            seq = dataset[name]
            count = len(seq) if max_frames is None else min(len(seq), max_frames)
            init_box = seq.init_box
            gt = datasets.ground_truth_of(seq)
        except (OSError, ValueError) as exc:
            # this sequence cannot be opened (a missing or bad annotation file, no frames): it fails alone when
            # the run reaches it (run_sources' per-sequence failure), the others are tracked and scored
            yield FrameSource(name, np.full(4, np.nan), _unopened_frames(exc), None)
            continue

        def frames(seq=seq, count=count):
            gain.reset()
            for index in range(count):
                yield seq.rgb(index), tracker_thermal(seq.thermal(index), None, gain)

        if max_frames is not None:
            gt = _truncate_gt(gt, count)
        yield FrameSource(name, init_box, frames, count, gt)


def _unopened_frames(error: Exception) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """``frames`` of a sequence that could not be opened: raises its error as an OSError (what track_source
    turns into that sequence's failure) when the run reaches it."""
    def frames():
        raise OSError(str(error)) from error
        yield  # a generator, like every frames()
    return frames


def _truncate_gt(gt: datasets.GroundTruth, count: int) -> datasets.GroundTruth:
    def cut(a):
        return None if a is None else a[:count]
    return datasets.GroundTruth(gt.boxes[:count], cut(gt.rgb), cut(gt.thermal), gt.attributes)


def bag_source(path: Path, topics: bagio.BagTopics, gain, max_frames: int | None, slop_s: float | None = None,
               init_box=None) -> FrameSource:
    """A bag as one sequence; ground truth and the first box from its ground-truth topic."""
    from ckd_ros.core.image import rgb_image_to_rgb8
    # a damaged bag still yields the frames before the damage; the ground truth read so far goes with them
    records = bagio.read_ground_truth_records(path, topics.ground_truth, keep_partial=True, modalities=True)
    gt = bag_ground_truth(records, max_frames)
    stamps, boxes = records.stamps_ns[:max_frames], records.boxes[:max_frames]
    if init_box is None:
        if not len(boxes):
            raise ValueError(f'{path}: no ground truth on {topics.ground_truth}; pass an initial box (--init-box)')
        init_box = boxes[0]

    pair_stamps: list[int] = []

    def frames():
        gain.reset()
        pair_stamps.clear()
        for pair in bagio.read_pairs(path, topics, slop_s=slop_s):
            if max_frames is not None and (pair.stamp_ns > stamps[-1] if len(stamps) else pair.index >= max_frames):
                return
            pair_stamps.append(pair.stamp_ns)
            yield (rgb_image_to_rgb8(pair.rgb, pair.rgb_encoding),
                   tracker_thermal(pair.thermal, pair.thermal_encoding, gain))

    return FrameSource(bagio.bag_name(path), np.asarray(init_box, dtype=np.float64), frames,
                       len(boxes) or None, gt, frame_stamps=stamps if len(stamps) else None, pair_stamps=pair_stamps)


def bag_ground_truth(records: bagio.GroundTruthRecords, max_frames: int | None = None) -> datasets.GroundTruth | None:
    """Ground truth of a converted bag for scoring, with the per-modality boxes that RGBT234 and GTOT
    bags carry (``<gt topic>/rgb``, ``/thermal``; the rgbt234 and gtot protocols need them)."""
    if not len(records.boxes):
        return None
    def cut(a):
        return None if a is None else a[:max_frames]
    return datasets.GroundTruth(cut(records.boxes), cut(records.rgb), cut(records.thermal))


def align_to_frames(source: FrameSource, boxes: np.ndarray, times: np.ndarray,
                    complete: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-pair results of a bag -> one row per ground-truth frame (``source.frame_stamps``): a frame
    without a pair keeps the previous box (the initial box before the first) and time 0. Without
    ``complete`` (the bag broke off) only the frames up to the last tracked pair. Returns the rows and
    how many frames had no pair."""
    if source.frame_stamps is None:
        return boxes, times, 0
    tracked = {int(stamp): k for k, stamp in enumerate(source.pair_stamps[:len(boxes)])}
    frame_stamps = source.frame_stamps
    if not complete:
        last = max(tracked) if tracked else None
        frame_stamps = frame_stamps[frame_stamps <= last] if last is not None else frame_stamps[:0]
    rows, row_times, missing = [], [], 0
    box = np.asarray(source.init_box, dtype=np.float64)
    for stamp in frame_stamps:
        k = tracked.get(int(stamp))
        if k is None:
            missing += 1
            row_times.append(0.0)
        else:
            box = boxes[k]
            row_times.append(times[k])
        rows.append(box)
    return np.array(rows, dtype=np.float64).reshape(-1, 4), np.array(row_times, dtype=np.float64), missing


# --------------------------------------------------------------------------------------------
# Running

@dataclass
class RunSummary:
    result_dir: Path
    tracked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    times: dict[str, np.ndarray] = field(default_factory=dict)
    ground_truth: dict[str, datasets.GroundTruth] = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    frames_without_pair: dict[str, int] = field(default_factory=dict)   # bags with dropped images


class PartialTrack(Exception):
    """Frames were tracked before the source failed (a damaged bag, an unreadable image file):
    ``boxes``/``times`` hold them."""

    def __init__(self, error: Exception, boxes: np.ndarray, times: np.ndarray):
        super().__init__(str(error))
        self.error, self.boxes, self.times = error, boxes, times


def track_source(tracker, source: FrameSource, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Frame 0 initialises with the first box (its output is that box, as in the official run loop),
    later frames are tracked. Times are per frame: ``initialize`` for frame 0, ``track`` after.
    A damaged bag or an unreadable (missing, truncated) image file raises :class:`PartialTrack` carrying
    the frames tracked before it."""
    boxes, times = [], []
    frames = source.frames()
    index = 0
    while True:
        try:
            rgb, thermal = next(frames)
        except StopIteration:
            break
        except (bagio.BagReadError, OSError) as exc:
            raise PartialTrack(exc, np.array(boxes).reshape(-1, 4), np.array(times)) from exc
        start = time.perf_counter()
        if index == 0:
            tracker.initialize(rgb, thermal, [float(v) for v in source.init_box])
            box = source.init_box
        else:
            box = tracker.track(rgb, thermal).box
        times.append(time.perf_counter() - start)
        boxes.append([float(v) for v in box])
        index += 1
        if progress is not None:
            progress.update(1)
    if not boxes:
        raise ValueError(f'sequence {source.name!r}: no frames')
    return np.array(boxes), np.array(times)


def run_sources(sources: Iterable[FrameSource], tracker_factory: Callable[[], object], result_dir: Path,
                overwrite: bool = False, show_progress: bool = True, keep_going: bool = False) -> RunSummary:
    """Track every source and write its result files. A sequence with finished results is skipped
    (resume) unless ``overwrite``; results of a sequence are written only once it is complete, so an
    interrupted run never leaves a half sequence that would be skipped later."""
    from tqdm import tqdm
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(result_dir)
    sources = list(sources)
    tracker = None
    cpu = report.CpuUsage().start()
    outer = tqdm(sources, desc='sequences', unit='seq', disable=not show_progress)
    for source in outer:
        outer.set_postfix_str(source.name)
        if source.ground_truth is not None:
            summary.ground_truth[source.name] = source.ground_truth
        if results.is_finished(result_dir, source.name) and not overwrite:
            mismatch = _result_length_mismatch(result_dir, source)
            if mismatch:
                # kept as it is (never replaced unasked), and not scored: it does not cover this run's frames
                summary.failed[source.name] = mismatch
                summary.ground_truth.pop(source.name, None)
            else:
                summary.skipped.append(source.name)
            continue
        if tracker is None:
            tracker = tracker_factory()
        inner = tqdm(total=source.length, desc=source.name, unit='frame', leave=False, disable=not show_progress)
        try:
            boxes, times = track_source(tracker, source, inner)
        except PartialTrack as partial:
            # a damaged bag: keep what was tracked under partial/ (outside the scored, resumable set)
            summary.failed[source.name] = str(partial.error)
            boxes, times, _ = align_to_frames(source, partial.boxes, partial.times, complete=False)
            if len(boxes):
                results.write_sequence_result(result_dir / 'partial', source.name, boxes, times, overwrite=True)
            if not keep_going:
                raise partial.error
            continue
        finally:
            inner.close()
        boxes, times, missing = align_to_frames(source, boxes, times)
        if missing:
            summary.frames_without_pair[source.name] = missing
        # a box file without its time file is a sequence that crashed between the two writes
        stale = (result_dir / f'{source.name}.txt').exists() and not results.is_finished(result_dir, source.name)
        results.write_sequence_result(result_dir, source.name, boxes, times, overwrite=overwrite or stale)
        summary.tracked.append(source.name)
        summary.times[source.name] = times
    summary.cpu = cpu.stop()
    return summary


def _result_length_mismatch(result_dir: Path, source: FrameSource) -> str | None:
    """Why the finished result of ``source`` in ``result_dir`` cannot stand for this run (another
    ``--max-frames``, or a longer dataset/bag), or None."""
    if source.length is None:
        return None
    path = results.result_paths(result_dir, source.name)[0]
    try:
        rows = len(results.read_result_boxes(path))
    except (OSError, ValueError) as error:
        return f'the existing result cannot be read ({error}); pass --overwrite to track it again'
    if rows == source.length:
        return None
    return (f'the existing result {path} has {rows} frames, this run makes {source.length} (written with another '
            '--max-frames?); pass --overwrite to track it again, or use another --results folder')



def make_tracker_factory(config: str, checkpoint: str | None, device: str | None, threads: int | None,
                         precision: str = 'fp32', backend: str = 'eager'):
    def factory():
        if threads:
            import torch
            torch.set_num_threads(threads)
        from ckd_ros import init_tracker
        kwargs = {'precision': precision, 'backend': backend}
        if checkpoint:
            kwargs['checkpoint'] = checkpoint
        if device:
            kwargs['device'] = device
        return init_tracker(config, **kwargs)
    return factory


def make_baseline_factory(options: baselines.BaselineOptions, threads: int | None):
    """An OpenCV baseline tracker (``--tracker csrt|kcf|mil``); ``threads``: OpenCV's thread count."""
    def factory():
        if threads:
            import cv2
            cv2.setNumThreads(threads)
        return baselines.OpenCVTracker(options)
    return factory


# --------------------------------------------------------------------------------------------
# Resuming: the settings a results folder was made with

def run_manifest(settings: dict) -> dict:
    from ckd_ros import __version__
    return {'format': 1, 'tool': 'ckd-eval run', 'package_version': __version__, 'settings': settings,
            'written': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def manifest_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting (and the package version) that differs."""
    a, b = dict(old.get('settings', {})), dict(new['settings'])
    a.setdefault('tracker', 'ckd')      # manifests written before --tracker: CKD runs
    a['package_version'], b['package_version'] = old.get('package_version'), new['package_version']
    if a.get('checkpoint_sha256') and a.get('checkpoint_sha256') == b.get('checkpoint_sha256'):
        a.pop('checkpoint', None)   # the same weights, moved or copied elsewhere
        b.pop('checkpoint', None)
    def short(v):
        return f'{v[:12]}...' if isinstance(v, str) and len(v) == 64 else repr(v)
    return [f'{k}: {short(a.get(k))} -> {short(b.get(k))}' for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_run_manifest(result_dir: Path, manifest: dict, this_run: list[str],
                       overwrite: bool) -> tuple[bool, list[str]]:
    """Refuse (:class:`RunRefused`) to add to or resume results made with other settings: resuming would skip every
    finished sequence and report the old results as this run's.

    Returns whether the manifest must be (re)written and the finished sequences to remove before it is:
    with ``overwrite`` and other settings (or results without a manifest) this run tracks every one of
    them again, and removing them first means that an interrupted run never leaves an old result under
    the new manifest. Refused too when the folder holds sequences outside this run (they would stay,
    made with the old settings, under the new manifest)."""
    finished = results.list_result_sequences(result_dir) if result_dir.is_dir() else []
    try:
        existing = results.read_run_manifest(result_dir)
    except ValueError as exc:
        if not overwrite:
            raise RunRefused(f'{exc}; pass --overwrite to track again and write a new one, or use another --results '
                           'folder') from None
        existing = None
    if existing is not None:
        differences = manifest_differences(existing, manifest)
        if not differences:
            return False, []
        problem = f'{result_dir} holds results of other settings ({"; ".join(differences)})'
    elif finished:
        problem = (f'{result_dir} holds results of {len(finished)} sequences but no run manifest '
                   f'({results.RUN_MANIFEST}: written by an older ckd-eval, or by score-bag), so which settings '
                   'made them is unknown')
    else:
        return True, []                  # a new folder
    if not finished:
        return True, []                  # nothing of the old settings to mix with
    if not overwrite:
        raise RunRefused(f"{problem}; resuming would report them as this run's. Pass the same options to resume, "
                       '--overwrite to track every sequence again with these, or another --results folder')
    others = [n for n in finished if n not in this_run]
    if others:
        raise RunRefused(f"{problem}; --overwrite would track only this run's sequences again and leave "
                       f'{", ".join(others[:10])}{" ..." if len(others) > 10 else ""} from the old settings. '
                       'Run every sequence (without --sequences), or use another --results folder')
    return True, finished


def discard_results(result_dir: Path, names: list[str]) -> None:
    """Remove finished results (the time file first: a box file alone is an unfinished sequence)."""
    for name in names:
        box_path, time_path = results.result_paths(result_dir, name)
        time_path.unlink(missing_ok=True)
        box_path.unlink(missing_ok=True)
    if names:
        print(f'removed the results of {len(names)} sequences made with the old settings (--overwrite)')


